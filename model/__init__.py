"""The contract between training and serving: network, tokenizers, checkpoints, inference."""

from model.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from model.network import RNNLM, ModelConfig, State
from model.tokenizer import CharTokenizer, Encoding, Tokenizer, TokenizerError, WordTokenizer

__all__ = [
    "RNNLM",
    "CharTokenizer",
    "Checkpoint",
    "CheckpointError",
    "Encoding",
    "ModelConfig",
    "State",
    "Tokenizer",
    "TokenizerError",
    "WordTokenizer",
    "load_checkpoint",
    "save_checkpoint",
]
