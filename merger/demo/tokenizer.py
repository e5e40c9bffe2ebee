"""A character-level tokenizer for tiny models, built offline with ``tokenizers``.

Every printable ASCII character and the newline is one token; ``<s>`` is added
in front of every encoded text (as Llama tokenizers do), ``</s>`` ends
sequences, ``<pad>`` pads. About 100 tokens in all, so embeddings stay tiny and
any text the demo tasks produce is representable.

The result is a ``PreTrainedTokenizerFast`` that ``save_pretrained`` writes as
``tokenizer.json`` + ``tokenizer_config.json``; ``AutoTokenizer`` loads it back
without network access.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
CHARS = tuple(sorted(set(string.printable) - set("\t\r\x0b\x0c")))


def build_char_tokenizer(
    specials: tuple[str, ...] = SPECIALS,
    bos: str | None = BOS,
    eos: str | None = EOS,
    pad: str = PAD,
    unk: str = UNK,
    cls_sep: tuple[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """Build the tokenizer.

    Args:
        specials: special tokens, given the first ids in this order.
        bos: token prepended to every encoded text (None: nothing prepended).
        eos: end-of-sequence token.
        pad: padding token.
        unk: stands for characters outside printable ASCII.
        cls_sep: for encoder models, ``(cls, sep)`` wrap each text as
            ``cls text sep`` (and pairs as ``cls a sep b sep``) instead of adding ``bos``.
    """
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    # A BPE model without merges maps each character to its own id.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk))
    tok.decoder = decoders.Fuse()
    if cls_sep is not None:
        cls, sep = cls_sep
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
        )
    elif bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, vocab[bos])]
        )
    kwargs: dict[str, str] = {"pad_token": pad, "unk_token": unk}
    if cls_sep is not None:
        kwargs.update(cls_token=cls_sep[0], sep_token=cls_sep[1])
    if bos is not None:
        kwargs["bos_token"] = bos
    if eos is not None:
        kwargs["eos_token"] = eos
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def build_bert_char_tokenizer() -> PreTrainedTokenizerFast:
    """Character tokenizer with BERT's specials: ``[CLS] text [SEP]``."""
    specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    tok = build_char_tokenizer(
        specials=specials, bos=None, eos=None, pad="[PAD]", unk="[UNK]", cls_sep=("[CLS]", "[SEP]")
    )
    tok.mask_token = "[MASK]"  # noqa: S105  (a vocabulary token, not a secret)
    return tok
