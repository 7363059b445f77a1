"""The import hook for a user's own code: `extra_modules: [my_pkg.my_algo, path/to/my_reward.py]`.

Each entry is imported once, before the run's config is checked and built, so that what it registers
(`@register_algo`) and defines (`_target_` classes and functions) is there when the checks look for it. An entry is
a dotted module name (found on `sys.path`, e.g. through `PYTHONPATH` or an installed package, or in the folder
the command runs in) or the path of a
`.py` file (relative to the folder the command runs in); a file's folder joins `sys.path`, so `_target_`s name its
contents by the file's stem (`my_reward.exact_match` for `my_reward.py`). A user's YAML files join the config
through `hydra.searchpath` (docs/architecture.md, "Extension points").
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from dvpo_lab.config import ConfigError

__all__ = ["import_extra_modules"]


def import_extra_modules(entries: Iterable[str] | None) -> list[ModuleType]:
    """Import every entry of `extra_modules` (module names or `.py` paths); already imported ones are reused.

    Returns:
        the modules, in order.
    Raises:
        ConfigError: an entry that is neither an importable module nor an existing `.py` file.
    """
    modules = []
    for entry in entries or ():
        entry = str(entry)
        if entry.endswith(".py") or "/" in entry or "\\" in entry:
            modules.append(_import_file(entry))
            continue
        try:
            modules.append(importlib.import_module(entry))
        except ModuleNotFoundError as e:
            if not (e.name and entry.startswith(e.name)):  # a module the user's module imports is missing
                raise
            here = Path.cwd()
            top = entry.split(".")[0]
            if str(here) in sys.path or not ((here / f"{top}.py").is_file() or (here / top).is_dir()):
                raise ConfigError(
                    f"extra_modules: {entry!r} cannot be imported ({e}); put its folder on PYTHONPATH "
                    "or give the path of its .py file"
                ) from None
            sys.path.insert(0, str(here))  # `dvpo-lab` (unlike `python -m`) does not put the folder on sys.path
            modules.append(importlib.import_module(entry))
    return modules


def _import_file(entry: str) -> ModuleType:
    path = Path(entry).expanduser().resolve()
    if not path.is_file() or path.suffix != ".py":
        raise ConfigError(
            f"extra_modules: {entry!r} is not a .py file (looked for {path}); fix the path, or give "
            "a module name on PYTHONPATH"
        )
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
        return loaded
    if loaded is not None:
        raise ConfigError(
            f"extra_modules: {entry!r} would be imported as {name!r}, which is already the module "
            f"{getattr(loaded, '__file__', name)}; rename the file"
        )
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
