"""Export: a trained smoke run's Hugging Face folders load with transformers alone and generate what the policy does.

One smoke run (`debug=smoke`, 3 RL steps, evaluated after every step, every step's checkpoint kept) is trained once
for the module; the tests read its `hf/final/`, `hf/best/` and checkpoints.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from dvpo_lab import algos
from dvpo_lab.config import ConfigError
from dvpo_lab.export import best_step, load_critic, main
from dvpo_lab.models.build import build_critic, build_policy, build_tokenizer
from dvpo_lab.rollout import positions_from_mask, sample
from dvpo_lab.run import make_task, run
from dvpo_lab.sft import warm_start_key
from tests.conftest import ROOT, compose_cfg

HAS_PEFT = importlib.util.find_spec("peft") is not None
N_PROMPTS = 8
# greedy generation with transformers only, in a fresh interpreter outside the checkout: prints the texts and
# whether anything imported dvpo_lab
HF_GENERATE = """
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
prompts, n, texts = json.loads(sys.argv[1]), int(sys.argv[2]), {}
for folder in sys.argv[3:]:
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=n, do_sample=False)
    texts[folder] = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
print(json.dumps({"texts": texts, "dvpo_lab": sorted(m for m in sys.modules if m.startswith("dvpo_lab"))}))
"""


def train_smoke(out: Path, cache_dir: Path, *overrides: str):
    """A smoke run (as the `smoke_cfg` fixture composes it) evaluated after every RL step, all checkpoints kept."""
    cfg = compose_cfg(
        ["debug=smoke", "logger=csv", "eval_every=1", "callbacks.model_checkpoint.save_top_k=-1", *overrides],
        out,
        cache_dir,
    )
    run(cfg)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("export") / "run"
    return train_smoke(out, cache_dir), out


def warm_dir(cfg) -> str:
    return str(Path(cfg.paths.cache_dir) / "warmstart" / warm_start_key(cfg))


def run_policy(cfg, ckpt: Path):
    """The run's policy at a checkpoint, built as the run builds it (warm-start folder, then the weights)."""
    tokenizer = build_tokenizer(cfg.model)
    policy = build_policy(cfg.model, tokenizer, warm_dir(cfg))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    policy.load_state_dict({k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")})
    return policy.eval(), tokenizer, state


def run_critic_values(cfg, policy, state, tokenizer):
    """(the run's critic at `state`, token ids, mask, its values `[B, L, ...]` read as the run reads them)."""
    spec = algos.critic_from(cfg.critic)
    critic = build_critic(policy, spec.n_out, spec.head_init_std)
    critic.load_state_dict({k[len("critic.") :]: v for k, v in state.items() if k.startswith("critic.")})
    enc = tokenizer(["12+34=", "905+17=1"], return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        values = spec.view(critic.eval()(ids, mask, positions_from_mask(mask), num_positions=ids.shape[1]))
    return critic, ids, mask, values


def state_of(folder: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)}/{len(a)} tensors differ, e.g. {different[:3]}"


def hf_generate(folders: list[Path], prompts: list[str], max_new_tokens: int, cwd: Path) -> list[list[str]]:
    """Greedy texts of each export folder, from a fresh interpreter that loads them with transformers alone."""
    r = subprocess.run(
        [sys.executable, "-c", HF_GENERATE, json.dumps(prompts), str(max_new_tokens), *map(str, folders)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["dvpo_lab"] == [], f"loading the export imported {result['dvpo_lab']}"
    return [result["texts"][str(f)] for f in folders]


def test_final_export_loads_without_dvpo_lab_and_generates_the_policys_greedy_text(trained, tmp_path):
    cfg, out = trained
    final = out / "hf" / "final"
    policy, tokenizer, _ = run_policy(cfg, out / "checkpoints" / "last.ckpt")  # the state after the last step
    assert_same_weights(state_of(final), policy.state_dict())
    assert json.loads((final / "export.json").read_text())["step"] == cfg.total_steps

    task = make_task(cfg, tokenizer)
    prompts = [p.prompt for p in task.test_problems()[:N_PROMPTS]]
    n = task.max_response_len
    ours = sample(policy, tokenizer, prompts, max_new_tokens=n, do_sample=False).texts
    assert hf_generate([final], prompts, n, cwd=tmp_path) == [ours]
    assert any(ours), "the policy generated nothing: the comparison would be empty"

    hf_tok = AutoTokenizer.from_pretrained(final)  # the project's character tokenizer, reloaded as a plain HF one
    assert hf_tok(prompts)["input_ids"] == tokenizer(prompts, add_special_tokens=False)["input_ids"]
    assert (hf_tok.eos_token, hf_tok.pad_token, hf_tok.padding_side) == ("<eos>", "<pad>", "left")


def test_best_export_is_the_policy_of_the_best_evaluation(trained):
    cfg, out = trained
    summary = json.loads((out / "summary.json").read_text())
    assert [h["step"] for h in summary["history"]] == list(range(cfg.total_steps + 1))
    step = summary["best/step"]
    assert step == best_step(summary["history"]) and step is not None
    info = json.loads((out / "hf" / "best" / "export.json").read_text())
    assert info["step"] == step and info["val/acc"] == summary["best/val_acc"]
    # the state after `step` RL steps: the warm-start, or the checkpoint of step index step - 1
    expected = (
        state_of(Path(warm_dir(cfg)))
        if step == 0
        else run_policy(cfg, out / "checkpoints" / f"epoch_{step - 1}.ckpt")[0].state_dict()
    )
    assert_same_weights(state_of(out / "hf" / "best"), expected)
    if step != cfg.total_steps:  # later evaluations that did not beat it left it alone
        assert not all(torch.equal(v, expected[k]) for k, v in state_of(out / "hf" / "final").items())


def test_export_cli_on_last_ckpt_gives_the_final_weights_and_the_runs_critic(trained, tmp_path):
    cfg, out = trained
    dest = tmp_path / "exported"
    r = subprocess.run(
        [sys.executable, "-m", "dvpo_lab.export", str(out / "checkpoints" / "last.ckpt"), str(dest), "--critic"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_weights(state_of(dest), state_of(out / "hf" / "final"))
    assert json.loads((dest / "export.json").read_text())["step"] == cfg.total_steps

    # the run's critic after the last step, against what load_critic reads from both exports
    policy, tokenizer, state = run_policy(cfg, out / "checkpoints" / "last.ckpt")
    _, ids, mask, expected = run_critic_values(cfg, policy, state, tokenizer)
    spec = algos.critic_from(cfg.critic)
    assert expected.shape == (2, ids.shape[1], spec.n_heads, spec.n_quantiles) and expected.abs().sum() > 0
    for folder in (dest, out / "hf" / "final"):
        with torch.no_grad():
            torch.testing.assert_close(load_critic(folder)(ids, mask), expected, rtol=0, atol=0)


def test_export_cli_user_errors_are_one_line_and_exit_2(trained, tmp_path, capsys):
    cfg, out = trained
    stray = tmp_path / "stray.ckpt"
    shutil.copyfile(out / "checkpoints" / "last.ckpt", stray)  # a real checkpoint, away from its run folder
    garbage = tmp_path / "run" / "checkpoints" / "bad.ckpt"
    garbage.parent.mkdir(parents=True)
    garbage.write_text("not a checkpoint")
    (tmp_path / "run" / ".hydra").mkdir()
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml({"model": {}}))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    cases = {
        "does not exist": [str(tmp_path / "missing.ckpt"), str(tmp_path / "o1")],
        "is not a run's checkpoint": [str(stray), str(tmp_path / "o2")],
        "cannot be read as a checkpoint": [str(garbage), str(tmp_path / "o3")],
        "is not an export folder": [str(out / "checkpoints" / "last.ckpt"), str(taken)],
    }
    for words, argv in cases.items():
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err, err
    assert (taken / "notes.txt").read_text() == "mine"


def test_export_settings_are_checked_at_start():
    import dvpo_lab

    with pytest.raises(ConfigError, match=r"lora=zip; Invalid value 'zip', expected one of \[merged, adapter\]"):
        dvpo_lab.compose(["export.lora=zip"])  # an Enum: refused as the config is composed


def test_best_step_is_the_first_highest_finite_accuracy():
    h = [
        {"step": 0, "val/acc": 0.25},
        {"step": 2, "val/acc": float("nan")},
        {"step": 4, "val/acc": 0.5},
        {"step": 6, "val/acc": 0.5},
        {"step": 8, "val/acc": 0.375},
    ]
    assert best_step(h) == 4  # a later equal accuracy does not replace it
    assert [best_step(h[: i + 1]) for i in range(len(h))] == [0, 0, 4, 4, 4]  # as training sees it, row by row
    assert best_step([{"step": 0, "val/acc": float("nan")}]) is None and best_step([]) is None


@pytest.mark.skipif(not HAS_PEFT, reason="peft not installed (pip install -e '.[lora]')")
def test_lora_run_exports_merged_and_adapter_with_the_same_greedy_text(tmp_path, cache_dir):
    out = tmp_path / "lora"
    cfg = train_smoke(out, cache_dir, "model.lora.enabled=true", "model.lora.r=4", "export.best=false")
    policy, tokenizer, state = run_policy(cfg, out / "checkpoints" / "last.ckpt")
    merged = copy.deepcopy(policy).merge_and_unload()  # peft's own merge, the reference
    final = out / "hf" / "final"
    assert_same_weights(state_of(final), merged.state_dict())
    assert not (out / "hf" / "best").exists()

    # the critic's LoRA backbone is written merged too; its values equal the run's up to float rounding
    critic, ids, mask, expected = run_critic_values(cfg, policy, state, tokenizer)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in critic.state_dict().items()), "critic LoRA untrained"
    with torch.no_grad():
        torch.testing.assert_close(load_critic(final)(ids, mask), expected, rtol=1e-5, atol=1e-5)

    adapter = tmp_path / "adapter"
    assert main([str(out / "checkpoints" / "last.ckpt"), str(adapter), "--lora", "adapter"]) == 0
    spec = json.loads((adapter / "adapter_config.json").read_text())
    assert Path(spec["base_model_name_or_path"]) == Path(warm_dir(cfg)).resolve()
    assert not (adapter / "model.safetensors").exists() and not (adapter / "critic").exists()  # no --critic

    task = make_task(cfg, tokenizer)
    prompts = [p.prompt for p in task.test_problems()[:N_PROMPTS]]
    n = task.max_response_len
    ours = sample(policy, tokenizer, prompts, max_new_tokens=n, do_sample=False).texts
    assert hf_generate([final, adapter], prompts, n, cwd=tmp_path) == [ours, ours]
