"""Prompt templates shared by the text tasks: the raw instruction (``plain``) or the model's chat template.

``task.template=chat`` wraps the user message with the tokenizer's own chat template (an instruct model's
``<|im_start|>user ...`` markup) and opens the assistant turn, as veRL's rollout does for chat models. The
rendered text is the prompt: the rollout tokenizes it without adding special tokens, so the template's own
markers are the only ones.
"""

from __future__ import annotations

from typing import Any

TEMPLATES = ("plain", "chat")


def check_template(template: str, tokenizer: Any | None) -> None:
    """Raise a ``ValueError`` naming ``task.template`` and the fix when ``template`` cannot be rendered."""
    if template not in TEMPLATES:
        raise ValueError(f"task.template={template!r}: expected one of {' | '.join(TEMPLATES)}")
    if template != "chat":
        return
    if tokenizer is None:
        raise ValueError(
            "task.template=chat needs the model's tokenizer, but the task was built without one; "
            "pass tokenizer= to the task (run.make_task does) or use task.template=plain"
        )
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"task.template=chat: the tokenizer ({type(tokenizer).__name__}, model.tokenizer) has no chat "
            "template. Fix: task.template=plain, or a chat model whose tokenizer ships one (e.g. an -Instruct "
            "model with model.tokenizer=auto); the project's char tokenizer has none"
        )


def render_prompt(user_text: str, template: str, tokenizer: Any | None = None) -> str:
    """The prompt text for one user message: ``user_text`` itself, or its chat-template rendering.

    Args:
        user_text: the question with its instruction.
        template: ``plain`` | ``chat``.
        tokenizer: a ``transformers`` tokenizer with ``chat_template`` (``chat`` only).
    """
    check_template(template, tokenizer)
    if template == "plain":
        return user_text
    return tokenizer.apply_chat_template(  # type: ignore[union-attr]
        [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
    )
