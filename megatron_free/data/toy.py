"""The toy task of the Free Transformer paper (section 4.1), generated on the fly.

A sample: 64 underscores; a random capital letter repeated 8 times at a uniformly random position
(0..56); then every one of the 64 characters independently replaced by "!" with probability 1/16;
finally the prompt "<letter>>" prepended. Example (66 characters):

    K>__!__KKKKKKKK_____________________________!____________________________

The hidden "global decision" is the target position: a model that samples it explicitly through Z
generates it consistently, one that does not must infer it token by token.

    ds = ToyTaskDataset(num_samples=100_000, seed=1234)        # CharacterTokenizer by default
    ds[0]["tokens"].shape == (TOY_SEQ_LENGTH,)                 # 66

Sample i is a function of (seed, i) only, so data order is reproducible across restarts.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from megatron_free.data.tokenizers import CharacterTokenizer, Tokenizer

BODY_LENGTH = 64
RUN_LENGTH = 8
NOISE_PROBABILITY = 1 / 16
NOISE_CHAR = "!"
BLANK_CHAR = "_"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PROMPT_LENGTH = 2  # "<letter>>"
TEXT_LENGTH = PROMPT_LENGTH + BODY_LENGTH  # 66 characters
NUM_POSITIONS = BODY_LENGTH - RUN_LENGTH + 1  # target starts at 0..56
# Tokens per sequence: 66 characters + eod = 67; after the shift into inputs/labels, 66 of each.
TOY_SEQ_LENGTH = TEXT_LENGTH


@dataclasses.dataclass(frozen=True)
class ToySample:
    text: str  # prompt + body, 66 characters, no eod
    letter: str
    position: int  # index of the target's first character in the body (0..56)
    noise: tuple[int, ...]  # body indices replaced by "!"


def generate_toy_sample(rng: np.random.Generator | int | tuple) -> ToySample:
    """One sample from a numpy Generator, or from a seed (an int or a tuple of ints, e.g. (seed, index))."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(list(rng) if isinstance(rng, tuple) else rng)
    letter = LETTERS[int(rng.integers(len(LETTERS)))]
    position = int(rng.integers(NUM_POSITIONS))
    body = [BLANK_CHAR] * BODY_LENGTH
    body[position : position + RUN_LENGTH] = letter * RUN_LENGTH
    noise = np.flatnonzero(rng.random(BODY_LENGTH) < NOISE_PROBABILITY)
    for i in noise:
        body[i] = NOISE_CHAR
    return ToySample(
        text=f"{letter}>" + "".join(body), letter=letter, position=position, noise=tuple(int(i) for i in noise)
    )


def parse_toy_sample(text: str) -> int | None:
    """Position of the target in a (generated) sample, or None when the text is not well formed.

    Well formed: 66 characters; "<letter>>" with a capital letter; a body of "_", "!" and that letter
    only, in which every letter lies inside one window of 8 characters made of the letter and "!"
    (the noise may have hidden some of the run). When several windows fit (a "!" next to the run)
    the leftmost is returned; a body without the letter at all is not well formed.
    """
    if len(text) != TEXT_LENGTH or text[1] != ">" or text[0] not in LETTERS:
        return None
    letter, body = text[0], text[PROMPT_LENGTH:]
    if any(c not in (BLANK_CHAR, NOISE_CHAR, letter) for c in body):
        return None
    hits = [i for i, c in enumerate(body) if c == letter]
    if not hits or hits[-1] - hits[0] >= RUN_LENGTH:
        return None
    for start in range(max(0, hits[-1] - RUN_LENGTH + 1), min(hits[0], NUM_POSITIONS - 1) + 1):
        if all(c != BLANK_CHAR for c in body[start : start + RUN_LENGTH]):
            return start
    return None


class ToyTaskDataset(torch.utils.data.Dataset):
    """Megatron-style samples of the toy task: tokens, labels, loss_mask, position_ids.

    Each is an int64 tensor of TOY_SEQ_LENGTH = 66 (set --seq-length 66): the 67 tokens of
    prompt + body + eod, shifted (tokens = [:-1], labels = [1:]). loss_mask is all ones (every
    next token is predicted, the closing eod included). Sample i depends on (seed, i) only.
    The tokenizer must give one token per character (CharacterTokenizer, the default, or ByteTokenizer).
    """

    seq_length = TOY_SEQ_LENGTH

    def __init__(self, num_samples: int, seed: int, tokenizer: Tokenizer | None = None):
        if num_samples < 1:
            raise ValueError(f"num_samples {num_samples}: must be >= 1")
        self.num_samples, self.seed = num_samples, seed
        self.tokenizer = tokenizer if tokenizer is not None else CharacterTokenizer()
        self._position_ids = torch.arange(self.seq_length, dtype=torch.int64)
        self._loss_mask = torch.ones(self.seq_length, dtype=torch.float32)

    def __len__(self) -> int:
        return self.num_samples

    def sample(self, index: int) -> ToySample:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        return generate_toy_sample((self.seed, index))

    def __getitem__(self, index: int) -> dict:
        ids = self.tokenizer.tokenize(self.sample(index).text) + [self.tokenizer.eod]
        if len(ids) != self.seq_length + 1:
            raise ValueError(
                f"{type(self.tokenizer).__name__} gives {len(ids)} tokens for a toy sample, "
                f"expected {self.seq_length + 1} (one per character + eod)"
            )
        ids = torch.tensor(ids, dtype=torch.int64)
        return {
            "tokens": ids[:-1].clone(),
            "labels": ids[1:].clone(),
            "loss_mask": self._loss_mask.clone(),
            "position_ids": self._position_ids.clone(),
        }
