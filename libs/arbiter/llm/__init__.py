"""LLM clients and labelers shared by the services: one client layer for OpenAI-compatible endpoints
(`client`), keys encrypted at rest (`secrets`), the labeling prompt and answer schema (`labeling`), and the
offline `similarity` labeler on the base encoder (`similarity`, imported on its own: it loads torch)."""

from arbiter.llm.client import LlmAnswer, LlmClient, LlmEndpoint, LlmError
from arbiter.llm.labeling import (
    Example,
    LabelChoice,
    label_answer_read,
    label_answer_schema,
    label_messages,
    label_system_prompt,
)
from arbiter.secrets import SecretUnreadable, secret_decrypt, secret_encrypt, secret_hint

__all__ = [
    "Example",
    "LabelChoice",
    "LlmAnswer",
    "LlmClient",
    "LlmEndpoint",
    "LlmError",
    "SecretUnreadable",
    "label_answer_read",
    "label_answer_schema",
    "label_messages",
    "label_system_prompt",
    "secret_decrypt",
    "secret_encrypt",
    "secret_hint",
]
