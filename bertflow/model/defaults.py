"""What a model's own files say about using it: its length limit, width, depth, architecture and
sentence-transformers settings. Read from config.json, the tokenizer's files and `st_files`; no weights."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from bertflow.errors import ModelError
from bertflow.model.st_files import Settings, read_json, read_settings


@dataclass(frozen=True)
class ModelDefaults:
    """What the model's own files say about how to use it."""

    max_length: int
    position_limit: int
    hidden_size: int
    num_layers: int
    st: Settings  # pooling, normalisation, prompts from its sentence-transformers files
    model_type: str = ""
    decoder_only: bool = False  # a causal LM: only its last token has read the whole text

    @property
    def pooling(self) -> str:
        return self.st.pooling

    @property
    def normalize(self) -> bool:
        return self.st.normalize

    def check_pooling(self, pooling: tuple[str, ...]) -> None:
        """Refuse poolings that do not fit a decoder-only model (all but last_token and its own)."""
        wrong = [p for p in pooling if p not in ("last_token", self.pooling)]
        if self.decoder_only and wrong:
            raise ModelError(
                f"a {self.model_type or 'causal'} model is decoder-only: each token sees only the tokens before it, "
                f"so --pooling {','.join(wrong)} does not embed the text; use --pooling last_token"
            )


# Encoders whose position ids start after the padding index (RoBERTa's `create_position_ids_from_input_ids`):
# max_position_embeddings is 2 more than the tokens they take (514 for 512).
_PADDING_OFFSET_POSITIONS = {
    "roberta",
    "xlm-roberta",
    "camembert",
    "mpnet",
    "xlm-roberta-xl",
    "roberta-prelayernorm",
    "data2vec-text",
    "xmod",
    "ibert",
    "longformer",
    "luke",
}


def _architecture(path: Path, config: dict) -> tuple[str, bool]:
    """(model type, decoder-only?); an encoder-decoder model is refused: bertflow embeds with encoders
    and decoder-only models, and AutoModel's forward of an encoder-decoder needs decoder inputs."""
    model_type = str(config.get("model_type") or "")
    if config.get("is_encoder_decoder") is True or config.get("is_decoder") is True:
        seq2seq, decoder = config.get("is_encoder_decoder") is True, True
    else:
        from transformers.models.auto import modeling_auto as auto

        seq2seq = model_type in auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
        # encoders have a causal-LM head too (BertLMHeadModel), never the other way round
        decoder = (
            model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and model_type not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
        )
    if seq2seq:
        raise ModelError(
            f"model {str(path)!r} is an encoder-decoder model ({model_type or 'is_encoder_decoder'}), which "
            "bertflow does not embed with; use an encoder, or a decoder-only model with --pooling last_token"
        )
    return model_type, decoder


def model_defaults(path: Path) -> ModelDefaults:
    """Pooling, normalization and length limit from the model's sentence-transformers files."""
    config = read_json(path / "config.json")
    if not isinstance(config, dict):
        raise ModelError(f"model path {str(path)!r} has no config.json")
    model_type, decoder_only = _architecture(path, config)
    # BERT's names, DistilBERT's, GPT-2's
    hidden = int(config.get("hidden_size") or config.get("dim") or config.get("n_embd") or 0)
    layers = int(config.get("num_hidden_layers") or config.get("n_layers") or config.get("n_layer") or 0)
    limit = int(config.get("max_position_embeddings") or config.get("n_positions") or 512)
    if model_type in _PADDING_OFFSET_POSITIONS:
        limit -= 2  # positions start after the padding index
    tok_config = read_json(path / "tokenizer_config.json") or {}
    tok_max = tok_config.get("model_max_length") if isinstance(tok_config, dict) else None
    max_length = min(limit, int(tok_max)) if isinstance(tok_max, int | float) and tok_max < 1e9 else limit

    st = read_settings(path)
    if st.max_seq_length:
        max_length = min(limit, st.max_seq_length)
    if decoder_only and not (path / "modules.json").is_file():
        st = replace(st, pooling="last_token")  # its default without sentence-transformers files
    return ModelDefaults(max_length, limit, hidden, layers, st, model_type, decoder_only)


def special_tokens(path: Path) -> int:
    """How many special tokens the model's tokenizer wraps one text in ([CLS] and [SEP] for BERT: 2)."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer.no_padding()  # a tokenizer.json may pad every text to a fixed length
        enc = tokenizer.encode("a")
    except Exception:
        return 0
    return sum(enc.special_tokens_mask)
