"""Reference architectures from funcnet layers, with the mappings of their published weights.

- :func:`gpt2` / :func:`gpt2_mapping`: Hugging Face ``gpt2`` checkpoints.
- :func:`bert` / :func:`bert_mapping`: Hugging Face ``bert`` checkpoints (``BertModel``).
- :func:`llama` / :func:`llama_mapping`: Hugging Face ``llama`` checkpoints
  (``LlamaForCausalLM``: RMSNorm, RoPE, grouped-query attention, SwiGLU).
- :func:`resnet`: torchvision's ResNet-18 layout (basic blocks); the default
  :func:`~funcnet.interop.torch_mapping` fits its state_dict as it is.

Each is an ordinary funcnet model (``serial``, ``repeat``, the standard
layers), so it trains, jits, shards and exports as any other; the language
models decode with :func:`funcnet.generate`.
"""

from funcnet.interop.models.bert import bert, bert_example_inputs, bert_mapping
from funcnet.interop.models.gpt2 import gpt2, gpt2_example_inputs, gpt2_mapping
from funcnet.interop.models.llama import (
    LLAMA_ATTENTION,
    llama,
    llama_example_inputs,
    llama_mapping,
)
from funcnet.interop.models.resnet import BasicBlock, resnet

__all__ = [
    "LLAMA_ATTENTION",
    "BasicBlock",
    "bert",
    "bert_example_inputs",
    "bert_mapping",
    "gpt2",
    "gpt2_example_inputs",
    "gpt2_mapping",
    "llama",
    "llama_example_inputs",
    "llama_mapping",
    "resnet",
]
