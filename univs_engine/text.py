"""Text side of UniVS prompts: string cleaning, CLIP BPE tokenization and the 81 prompt templates.

Behaviour follows the official UniVS pipeline:

* expressions are cleaned by the dataset mapper (`clean_strings`) before they reach the text encoder;
* each string is put into the 81 prompt templates; for category names the name is first stripped of
  '/', ',' and '+' (the latter becomes a space) before it is substituted;
* tokens are ``[SOT] + BPE(text) + [EOT]``, cut to the context length (the EOT is *not* put back when the
  text is too long), then zero padded.

The BPE merges are the ones bundled with open_clip_torch (identical to OpenAI CLIP's
``bpe_simple_vocab_16e6.txt.gz``); nothing is downloaded.
"""
from __future__ import annotations

import html
from functools import lru_cache
from typing import Iterable, List, Sequence, Union

import ftfy
import regex
import torch

SOT_TOKEN = 49406
EOT_TOKEN = 49407
CONTEXT_LENGTH = 77

# The 81 prompt templates, in the order used by UniVS (CLIP ImageNet templates in RegionCLIP's order with
# "{}." prepended). Template 0 gives the word features of an expression.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "{}.",
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)
NUM_TEMPLATES = len(PROMPT_TEMPLATES)
assert NUM_TEMPLATES == 81

# --------------------------------------------------------------------------------------------------------------
# Cleaning
# --------------------------------------------------------------------------------------------------------------
_DROP_CHARS = frozenset("0123456789()")
_PUNCT_RE = regex.compile(r"[.,'!?\"()*#:;]")


def clean_string(text: str) -> str:
    """Clean one expression / class name the way the UniVS dataset mapper does.

    '_' becomes a space, ASCII digits and parentheses are dropped, the text is lower-cased, the characters
    . , ' ! ? " ( ) * # : ; are removed, '-' and '/' become spaces. Whitespace is not collapsed here (the
    tokenizer does that).
    """
    text = "".join(c for c in text.replace("_", " ") if c not in _DROP_CHARS)
    return _PUNCT_RE.sub("", text.lower()).replace("-", " ").replace("/", " ")


def clean_strings(strings: Union[str, Sequence[str]]) -> Union[str, List[str]]:
    """`clean_string` on a string, or on each string of a list (returns a new list; the input is untouched)."""
    if isinstance(strings, str):
        return clean_string(strings)
    return [clean_string(s) for s in strings]


def category_prompt_text(name: str) -> str:
    """What a category name becomes before it is put into a template ('/', ',' removed, '+' -> space)."""
    return name.replace("/", "").replace(",", "").replace("+", " ")


def expression_prompts(expression: str) -> List[str]:
    """The 81 templated strings of an expression (no cleaning here)."""
    return [t.replace("{}", expression) for t in PROMPT_TEMPLATES]


def category_prompts(name: str) -> List[str]:
    """The 81 templated strings of an (already cleaned) category name."""
    text = category_prompt_text(name)
    return [t.replace("{}", text) for t in PROMPT_TEMPLATES]


# --------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------
_WS_RE = regex.compile(r"\s+")
# Same split pattern as OpenAI CLIP (special tokens spelt as in the OpenAI / UniVS vocabulary).
_SPLIT_RE = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_SPECIAL = {"<|startoftext|>": SOT_TOKEN, "<|endoftext|>": EOT_TOKEN}
# Only the first CONTEXT_LENGTH - 1 ids of a text are ever kept, and one BPE token spans at most 32 byte
# characters, so a sequence never needs more than this much of a piece, nor (normalised whitespace and HTML
# entities aside) of the text: longer input is cut before the (quadratic) BPE runs. Texts shorter than these
# bounds tokenize exactly as before.
_MAX_PIECE_CHARS = (CONTEXT_LENGTH + 1) * 32
_MAX_TEXT_CHARS = 4 * _MAX_PIECE_CHARS


def _normalize(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WS_RE.sub(" ", text).strip().lower()


class ClipBPETokenizer:
    """CLIP byte-level BPE on top of open_clip's bundled vocabulary (`open_clip.tokenizer.SimpleTokenizer`).

    Only open_clip's merge table, byte map and BPE routine are used; cleaning, special-token handling,
    truncation and padding follow the UniVS/OpenAI code (open_clip's own ``__call__`` forces an EOT into the
    last slot of a truncated sequence, which UniVS does not).
    """

    def __init__(self, context_length: int = CONTEXT_LENGTH):
        from open_clip.tokenizer import SimpleTokenizer  # bundled BPE file, no download

        self._tok = SimpleTokenizer()
        self.context_length = context_length
        if self._tok.encoder.get("<start_of_text>") != SOT_TOKEN or len(self._tok.encoder) != EOT_TOKEN + 1:
            raise RuntimeError("open_clip's bundled CLIP vocabulary is not the expected 49408-token OpenAI BPE")

    def encode(self, text: str, limit: int | None = None) -> List[int]:
        """BPE ids of `text` (no SOT/EOT); with `limit`, only what the first `limit` ids need is tokenized."""
        ids: List[int] = []
        tok = self._tok
        for match in _SPLIT_RE.finditer(_normalize(text)):
            if limit is not None and len(ids) >= limit:
                return ids[:limit]
            piece = match.group()
            special = _SPECIAL.get(piece)
            if special is not None:
                ids.append(special)
                continue
            piece = "".join(tok.byte_encoder[b] for b in piece.encode("utf-8"))
            if limit is None:
                ids.extend(self._bpe(piece))
            else:
                ids.extend(self._bpe_start(piece, limit - len(ids)))
        return ids if limit is None else ids[:limit]

    def _bpe(self, piece: str) -> List[int]:
        return [self._tok.encoder[p] for p in self._tok.bpe(piece).split(" ")]

    def _bpe_start(self, piece: str, need: int) -> List[int]:
        """The first ids of a piece: BPE of a growing start of it until that gives `need` ids and a margin the
        cut cannot reach (a piece of up to 256 byte characters is taken whole, as ``_bpe`` does)."""
        size = 256
        while True:
            ids = self._bpe(piece[:size])
            if size >= min(len(piece), _MAX_PIECE_CHARS) or len(ids) >= need + 8:
                return ids
            size *= 2

    def sequence(self, text: str) -> List[int]:
        """``[SOT] + ids + [EOT]`` cut to the context length (EOT dropped when too long, as in UniVS); only the
        start of a very long text is tokenized (the ids it yields are the ones kept)."""
        ids = self.encode(text[:_MAX_TEXT_CHARS], self.context_length - 1)
        return ([SOT_TOKEN] + ids + [EOT_TOKEN])[: self.context_length]

    def __call__(self, texts: Union[str, Iterable[str]]) -> torch.Tensor:
        """Token ids [N, context_length] int64, zero padded."""
        if isinstance(texts, str):
            texts = [texts]
        seqs = [self.sequence(t) for t in texts]
        out = torch.zeros(len(seqs), self.context_length, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return out


@lru_cache(maxsize=1)
def get_tokenizer() -> ClipBPETokenizer:
    """Process-wide tokenizer (building it reads the 49k merges once)."""
    return ClipBPETokenizer()


def tokenize(texts: Union[str, Iterable[str]]) -> torch.Tensor:
    """Token ids [N, 77] int64 of the given strings (no templates, no cleaning beyond CLIP's own)."""
    return get_tokenizer()(texts)


def tokenize_expressions(expressions: Sequence[str]) -> torch.Tensor:
    """[N, 81, 77] token ids of each expression put into the 81 templates (no `clean_strings`; the
    official `pre_tokenize_expression`)."""
    if isinstance(expressions, str):
        expressions = [expressions]
    tok = get_tokenizer()
    if not expressions:
        return torch.zeros(0, NUM_TEMPLATES, tok.context_length, dtype=torch.long)
    flat = [p for e in expressions for p in expression_prompts(e)]
    return tok(flat).view(len(expressions), NUM_TEMPLATES, tok.context_length)


def tokenize_categories(names: Sequence[str], clean: bool = True) -> torch.Tensor:
    """[N, 81, 77] token ids of category names (``clean_strings`` then the category template rule), as the
    official concept-embedding extraction does."""
    if isinstance(names, str):
        names = [names]
    tok = get_tokenizer()
    if not names:
        return torch.zeros(0, NUM_TEMPLATES, tok.context_length, dtype=torch.long)
    names = [clean_string(n.strip()) if clean else n for n in names]
    flat = [p for n in names for p in category_prompts(n)]
    return tok(flat).view(len(names), NUM_TEMPLATES, tok.context_length)
