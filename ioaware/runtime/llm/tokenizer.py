"""Tokenizers for the runtime: byte-level BPE built from GGUF metadata, or a Hugging Face tokenizer.json, both
through the `tokenizers` package; chat templates rendered with jinja2 the way transformers renders them."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import UnsupportedError

# llama.cpp's `tokenizer.ggml.pre` names -> the pre-tokenizer transformers uses for the same vocabulary.
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
SUPPORTED_PRE = ("default", "gpt-2", "gpt2", "smollm", "llama-bpe", "llama3")

# GGUF token_type values (llama.cpp's llama_token_type)
_CONTROL, _USER_DEFINED = 3, 4


def _pre_tokenizer(pre: str):
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("default", "gpt-2", "gpt2"):
        return byte_level
    if pre == "smollm":  # digits split one by one, then GPT-2's regex
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("llama-bpe", "llama3"):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise UnsupportedError(f"GGUF pre-tokenizer {pre!r} is not supported (supported: {', '.join(SUPPORTED_PRE)})")


class Tokenizer:
    """encode/decode plus the special ids generation needs and an optional chat template."""

    def __init__(self, tok, bos_id: int | None, eos_ids: list[int], add_bos: bool, chat_template: str | None):
        self.tok = tok  # tokenizers.Tokenizer
        self.bos_id = bos_id
        self.eos_ids = [i for i in eos_ids if i is not None]
        self.add_bos = add_bos
        self.chat_template = chat_template

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def id_to_token(self, i: int) -> str | None:
        return self.tok.id_to_token(i)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise UnsupportedError("this model has no chat template; run without --chat")
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg):
            raise TemplateError(msg)

        # transformers renders with trim_blocks/lstrip_blocks; doing the same keeps prompts token-identical
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        tmpl = env.from_string(self.chat_template)
        bos = self.id_to_token(self.bos_id) if self.bos_id is not None else ""
        eos = self.id_to_token(self.eos_ids[0]) if self.eos_ids else ""
        return tmpl.render(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos,
                           eos_token=eos)

    # -- constructors -------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        """Everything this tokenizer is, as one JSON text (`from_json` reads it back): a cached copy opens without
        parsing the model file again."""
        import json

        return json.dumps({"format": "ioaware-tokenizer", "version": 1, "tokenizer": self.tok.to_str(),
                           "bos_id": self.bos_id, "eos_ids": self.eos_ids, "add_bos": self.add_bos,
                           "chat_template": self.chat_template})

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        import json

        from tokenizers import Tokenizer as HFTokenizer

        d = json.loads(text)
        if d.get("format") != "ioaware-tokenizer" or d.get("version") != 1:
            raise ValueError("not an ioaware tokenizer file (or another version)")
        return cls(HFTokenizer.from_str(d["tokenizer"]), d["bos_id"], d["eos_ids"], d["add_bos"], d["chat_template"])

    @classmethod
    def from_gguf(cls, reader) -> Tokenizer:
        from tokenizers import AddedToken, decoders, models
        from tokenizers import Tokenizer as HFTokenizer

        from .gguf_loader import field_value

        model = field_value(reader, "tokenizer.ggml.model")
        if model is None:
            raise ValueError("GGUF file has no tokenizer (tokenizer.ggml.model is missing)")
        if model != "gpt2":
            raise UnsupportedError(f"GGUF tokenizer model {model!r} is not supported (supported: gpt2, i.e. "
                                   "byte-level BPE)")
        tokens = field_value(reader, "tokenizer.ggml.tokens")
        merges = field_value(reader, "tokenizer.ggml.merges") or []
        types = field_value(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
        vocab = {t: i for i, t in enumerate(tokens)}
        bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False,
                         byte_fallback=False)
        tok = HFTokenizer(bpe)
        tok.pre_tokenizer = _pre_tokenizer(field_value(reader, "tokenizer.ggml.pre", "default"))
        tok.decoder = decoders.ByteLevel()
        special = [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types)
                   if t == _CONTROL]
        user = [AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types)
                if t == _USER_DEFINED]
        tok.add_special_tokens(special)
        if user:
            tok.add_tokens(user)
        eos = [field_value(reader, "tokenizer.ggml.eos_token_id"), field_value(reader, "tokenizer.ggml.eot_token_id")]
        return cls(tok, bos_id=field_value(reader, "tokenizer.ggml.bos_token_id"),
                   eos_ids=sorted({int(i) for i in eos if i is not None}),
                   add_bos=bool(field_value(reader, "tokenizer.ggml.add_bos_token", False)),
                   chat_template=field_value(reader, "tokenizer.chat_template"))

    @classmethod
    def from_folder(cls, folder: str | Path, config: dict | None = None) -> Tokenizer:
        """tokenizer.json (+ tokenizer_config.json for special tokens and the chat template)."""
        from tokenizers import Tokenizer as HFTokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no tokenizer.json")
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as e:
            raise ValueError(f"{path} is not a readable tokenizer.json ({e})") from None
        tcfg = _read_json(folder / "tokenizer_config.json")
        gen = _read_json(folder / "generation_config.json")
        config = config or {}

        def tid(v):
            if isinstance(v, dict):
                v = v.get("content")
            return tok.token_to_id(v) if isinstance(v, str) else None

        bos = config.get("bos_token_id", tid(tcfg.get("bos_token")))
        eos = gen.get("eos_token_id", config.get("eos_token_id", tid(tcfg.get("eos_token"))))
        eos = eos if isinstance(eos, list) else [eos]
        template = tcfg.get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if template is None and (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        # transformers adds BOS through the tokenizer.json post-processor; we add it ourselves
        add_bos = bool(tcfg.get("add_bos_token", False))
        if tok.post_processor is not None and bos is not None:
            add_bos = add_bos or bos in tok.encode("a", add_special_tokens=True).ids
        return cls(tok, bos_id=bos, eos_ids=[int(e) for e in eos if e is not None], add_bos=add_bos,
                   chat_template=template)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
