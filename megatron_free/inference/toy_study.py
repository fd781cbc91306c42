"""The generation study of the paper's toy task (section 4.1, Figure 4): from one prompt, groups of
samples whose Z is shared by the whole group and groups whose samples draw Z independently; and
the measures that tell what Z carries.

    groups = generate_groups(model_chunks, tokenizer, "KQA", group_size=8, shared_z=True,
                             latent_bits=12, seed=0)       # 3 groups of 8 texts, one Z per group
    summarize_groups(groups)   # {"well_formed": .., "position_agreement": .., "noise_identical": ..}

Measures over groups of generated texts (pairs are unordered pairs of samples of one group):
  well_formed         fraction of samples that parse_toy_sample accepts (66 characters, one run of
                      the prompt's letter of length 8, allowing for the noise)
  position_agreement  over pairs of well-formed samples: fraction with the target at the same place
  position_distance   over the same pairs: mean |difference| of the target positions (uniform and
                      independent positions: 19.0)
  noise_identical     over all pairs: fraction whose "!" positions in the body are identical
  noise_jaccard       over all pairs: mean |A & B| / |A | B| of the "!" positions (1 when both empty)
A model whose Z carries the target position has position_agreement near 1 in shared-Z groups and
near 1/57 (a uniform position) in independent-Z groups; likewise the noise measures for the noise.
bootstrap_interval gives a measure's uncertainty, resampling whole groups.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from megatron_free.data.toy import BODY_LENGTH, NOISE_CHAR, PROMPT_LENGTH, parse_toy_sample
from megatron_free.model.latent_rng import prior_codes, sample_seeds, sequence_positions
from megatron_free.training.metrics import print_rank_last


def noise_positions(text: str) -> frozenset[int]:
    """Indices of the "!" characters in the body (the text after the prompt)."""
    return frozenset(i for i, c in enumerate(text[PROMPT_LENGTH:]) if c == NOISE_CHAR)


def well_formed_rate(texts) -> float:
    texts = list(texts)
    return sum(parse_toy_sample(t) is not None for t in texts) / len(texts) if texts else float("nan")


def _pairs(groups):
    for group in groups:
        yield from itertools.combinations(group, 2)


def position_agreement(groups) -> tuple[float, int]:
    """(fraction of pairs of well-formed samples of one group with the same target position,
    number of such pairs); NaN when no group has two well-formed samples."""
    distances = _position_distances(groups)
    same = sum(d == 0 for d in distances)
    return (same / len(distances) if distances else float("nan")), len(distances)


def position_distance(groups) -> float:
    """Mean |position difference| over pairs of well-formed samples of one group (NaN if none)."""
    distances = _position_distances(groups)
    return sum(distances) / len(distances) if distances else float("nan")


def _position_distances(groups) -> list[int]:
    distances = []
    for group in groups:
        positions = [p for p in map(parse_toy_sample, group) if p is not None]
        distances += [abs(a - b) for a, b in itertools.combinations(positions, 2)]
    return distances


def _jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def noise_agreement(groups) -> dict:
    """Over all pairs of samples of one group: the fraction with identical "!" positions and the
    mean Jaccard overlap of the "!" positions."""
    identical = jaccard = count = 0
    for a, b in _pairs(groups):
        na, nb = noise_positions(a), noise_positions(b)
        identical += na == nb
        jaccard += _jaccard(na, nb)
        count += 1
    nan = float("nan")
    return {
        "noise_identical": identical / count if count else nan,
        "noise_jaccard": jaccard / count if count else nan,
        "pairs": count,
    }


def summarize_groups(groups) -> dict:
    """Every measure of the module docstring for a list of groups (lists of texts)."""
    groups = [list(g) for g in groups]
    position, position_pairs = position_agreement(groups)
    noise = noise_agreement(groups)
    return {
        "samples": sum(len(g) for g in groups),
        "well_formed": well_formed_rate(t for g in groups for t in g),
        "position_agreement": position,
        "position_pairs": position_pairs,
        "position_distance": position_distance(groups),
        "noise_identical": noise["noise_identical"],
        "noise_jaccard": noise["noise_jaccard"],
        "pairs": noise["pairs"],
    }


# The count each measure of summarize_groups is a mean over: over many groups, the measure is
# sum(measure x count) / sum(count) of the per-group values.
_MEASURE_COUNTS = {
    "well_formed": "samples",
    "position_agreement": "position_pairs",
    "position_distance": "position_pairs",
    "noise_identical": "pairs",
    "noise_jaccard": "pairs",
}


def bootstrap_interval(groups, key: str, *, confidence=0.95, resamples=2000, seed=0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``summarize_groups(groups)[key]``, resampling whole groups
    with replacement: samples of one group share a prompt (and, with shared Z, a Z), so groups,
    not pairs, are the independent draws. (NaN, NaN) where some resample has nothing to measure
    (position: no pair of well-formed samples).

    numpy over per-group sums rather than scipy.stats.bootstrap: scipy is not a dependency, and
    this keeps each resample a sum, not a new summarize_groups over the texts."""
    count_key = _MEASURE_COUNTS[key]
    per_group = [summarize_groups([group]) for group in groups]
    counts = np.array([g[count_key] for g in per_group], dtype=float)
    totals = np.array([g[key] * g[count_key] if g[count_key] else 0.0 for g in per_group])
    picks = np.random.default_rng(seed).integers(0, len(per_group), size=(resamples, len(per_group)))
    with np.errstate(invalid="ignore", divide="ignore"):
        values = totals[picks].sum(axis=1) / counts[picks].sum(axis=1)
    if not np.isfinite(values).all():
        return float("nan"), float("nan")
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def generate_groups(
    model_chunks, tokenizer, letters: str, group_size: int, *, shared_z: bool, latent_bits, seed: int
) -> list[list[str]]:
    """One group of ``group_size`` samples from the prompt "<letter>>" per letter, all groups in
    one batch. ``shared_z``: every sample of a group gets the same Z (one uniform code per
    position, drawn once per group); otherwise each sample draws its own. Temperature 1, no top-k.
    ``latent_bits`` None: a baseline (no Z; both settings are then the same distribution)."""
    from megatron_free.inference.generate import generate  # megatron-core: not needed by the measures

    prompts = [tokenizer.tokenize(f"{letter}>") for letter in letters for _ in range(group_size)]
    prompt = torch.tensor(prompts)
    total = prompt.shape[1] + BODY_LENGTH
    codes = None
    if latent_bits is not None:
        rows = len(letters) if shared_z else len(letters) * group_size
        codes = prior_codes(sample_seeds(seed, rows), sequence_positions(rows, total), latent_bits)
        if shared_z:
            codes = codes.repeat_interleave(group_size, dim=0)
    ids = generate(model_chunks, prompt, BODY_LENGTH, seed=seed, codes=codes, vocab_size=tokenizer.vocab_size)
    texts = [tokenizer.detokenize(row.tolist()) for row in ids]
    return [texts[i : i + group_size] for i in range(0, len(texts), group_size)]


def sample_groups(model_chunks, tokenizer, letter: str, group_size: int, seed: int, latent_bits):
    """{'shared Z': [texts], 'independent Z': [texts]} from the prompt '<letter>>'; the groups
    use different seeds, so that no sample of one repeats a sample of the other by construction."""
    return {
        name: generate_groups(
            model_chunks, tokenizer, letter, group_size, shared_z=shared, latent_bits=latent_bits, seed=seed + offset
        )[0]
        for name, shared, offset in (("shared Z", True, 0), ("independent Z", False, 1000))
    }


SAMPLE_MARKS = (
    'ok = a well-formed toy sequence (66 characters: "<letter>>", then 64 of "_", "!" and that '
    'letter only, every letter inside one window of 8, the target, which the noise "!" may partly '
    "hide); bad = any other text"
)


def toy_samples_report(groups: dict) -> list[str]:
    """The lines that show ``sample_groups``'s groups: each text marked ok/bad, and per group the
    measures of summarize_groups."""
    lines = [f'toy samples at temperature 1 from the prompt "K>"; {SAMPLE_MARKS}']
    for name, texts in groups.items():
        lines.append(f"--- {name} ---")
        lines += [("ok " if parse_toy_sample(t) is not None else "bad") + f" {t}" for t in texts]
    lines.append(
        "measures (pairs: unordered pairs of samples of the group; a Z that carries the "
        "target position gives a same-position rate near 1 with shared Z and near 1/57 "
        "with independent Z, a Z that carries the noise does the same for the noise "
        "measures):"
    )
    for name, texts in groups.items():
        m = summarize_groups([texts])
        lines.append(
            f"  {name + ':':<15} well-formed {m['well_formed']:.2f} of {m['samples']} | same position "
            f"{m['position_agreement']:.2f} over {m['position_pairs']} pairs of well-formed samples | "
            f"noise identical {m['noise_identical']:.2f}, noise Jaccard {m['noise_jaccard']:.2f} "
            f"over {m['pairs']} pairs"
        )
    return lines


class ToySamples:
    """The toy main job's end-of-run samples, an end-of-training hook (run_config.end_of_training_hooks):
    ``num_samples`` texts with a shared Z and as many with independent Z (latent_bits None: a
    baseline's, once), printed with their measures and, given a TrainingLogger, written to
    TensorBoard as the text summary "toy samples" at the run's last iteration."""

    def __init__(self, tokenizer, num_samples: int, seed: int, latent_bits: int | None):
        self.tokenizer, self.num_samples, self.seed, self.latent_bits = tokenizer, num_samples, seed, latent_bits

    def __call__(self, model_chunks, logger=None, iteration: int = 0) -> list[str]:
        """Collective (generation runs on every rank). Returns the printed lines."""
        groups = sample_groups(model_chunks, self.tokenizer, "K", self.num_samples, self.seed, self.latent_bits)
        lines = toy_samples_report(groups)
        for line in lines:
            print_rank_last(line)
        if logger is not None:
            # Indented: markdown shows the lines as they are, in a fixed-width font.
            logger.text("toy samples", "\n".join("    " + line for line in lines), iteration)
        return lines
