"""Training and validation data: megatron-core's GPTDataset (indexed .bin/.idx, blends, splits)
or mock data through BlendedMegatronDatasetBuilder, or the paper's toy task made on the fly;
then Megatron's sample order: each global batch is a run of consecutive samples, split into
micro-batches and data-parallel ranks.

Every sample also carries ``latent_seeds``: a seed derived from the run seed and the sample's
global index, from which the Free Transformer draws its codes, so the same sample gets the same
codes whatever the parallel layout.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from megatron_free.data.tokenizers import Tokenizer


def latent_seed(run_seed: int, split: str, index: int) -> int:
    return zlib.crc32(f"{run_seed}:{split}:{index}".encode()) & 0x7FFFFFFF


class WithLatentSeeds(Dataset):
    """Adds ``latent_seeds`` (an int64 scalar per sample) and wraps indices past the end."""

    def __init__(self, dataset, run_seed: int, split: str):
        self.dataset, self.run_seed, self.split = dataset, run_seed, split

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.dataset[index % len(self.dataset)])
        sample.pop("attention_mask", None)  # causal masking happens inside attention
        sample["latent_seeds"] = torch.tensor(latent_seed(self.run_seed, self.split, index))
        return sample


class MegatronBatchSampler:
    """Megatron's pretraining order: global batch k holds samples [k*G, (k+1)*G); micro-batch m of
    DP rank r takes [k*G + m*b*dp + r*b, ... + b). Starting at ``consumed_samples`` resumes the
    exact order."""

    def __init__(self, consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int):
        self.next_sample = consumed_samples
        self.micro_batch_size, self.dp_rank, self.dp_size = micro_batch_size, dp_rank, dp_size

    def __iter__(self):
        stride = self.micro_batch_size * self.dp_size
        while True:
            start = self.next_sample + self.dp_rank * self.micro_batch_size
            yield list(range(start, start + self.micro_batch_size))
            self.next_sample += stride


@dataclass
class DataConfig:
    seed: int
    seq_length: int
    micro_batch_size: int
    global_batch_size: int
    train_samples: int
    eval_samples: int
    data_path: Optional[list] = None
    split: str = "969,30,1"
    data_cache_path: Optional[str] = None
    mock_data: bool = False
    toy_data: bool = False
    num_workers: int = 0


class _MegatronTokenizerView:
    """The attributes of a tokenizer that megatron-core's GPTDataset reads."""

    def __init__(self, tokenizer: Optional[Tokenizer], vocab_size: int):
        # --mock-data without a tokenizer: megatron's mock documents end with the last id.
        self.eod = tokenizer.eod if tokenizer is not None else vocab_size - 1
        self.pad = tokenizer.pad if tokenizer is not None and tokenizer.pad is not None else -1
        self.vocab_size = vocab_size
        self.unique_identifiers = {"class": type(tokenizer).__name__, "vocab_size": vocab_size}

    def __repr__(self):  # megatron-core puts the config (and so this) in its log lines
        return f"Tokenizer(eod={self.eod}, vocab_size={self.vocab_size})"


def _parse_blend(data_path: list) -> tuple[list, Optional[list]]:
    from megatron.core.datasets.utils import get_blend_from_list

    return get_blend_from_list(data_path)


def build_train_valid_datasets(config: DataConfig, tokenizer: Tokenizer, vocab_size: int):
    """(train, valid) map-style datasets of megatron-style samples with latent seeds."""
    if config.toy_data:
        from megatron_free.data.toy import ToyTaskDataset

        train = ToyTaskDataset(config.train_samples, seed=config.seed, tokenizer=tokenizer)
        valid = ToyTaskDataset(max(config.eval_samples, 1), seed=config.seed + 1, tokenizer=tokenizer)
    else:
        train, valid = _build_gpt_datasets(config, tokenizer, vocab_size)
    return (
        WithLatentSeeds(train, config.seed, "train"),
        WithLatentSeeds(valid, config.seed, "valid") if valid is not None else None,
    )


def _build_gpt_datasets(config: DataConfig, tokenizer: Tokenizer, vocab_size: int):
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    blend = None
    if not config.mock_data:
        blend = _parse_blend(config.data_path)
        for prefix in blend[0]:
            for suffix in (".bin", ".idx"):
                if not _exists(prefix + suffix):
                    raise FileNotFoundError(f"--data-path: {prefix}{suffix} does not exist")
    gpt_config = GPTDatasetConfig(
        random_seed=config.seed,
        sequence_length=config.seq_length,
        blend=blend,
        split=config.split,
        path_to_cache=config.data_cache_path,
        tokenizer=_MegatronTokenizerView(tokenizer, vocab_size),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        mid_level_dataset_surplus=0.005,
    )
    sizes = [config.train_samples, config.eval_samples, 0]
    dataset_cls = MockGPTDataset if config.mock_data else GPTDataset
    builder = BlendedMegatronDatasetBuilder(dataset_cls, sizes, _build_on_this_rank, gpt_config)
    train, valid, _ = _rank_zero_first(builder.build, config.data_cache_path)
    return train, valid


def _exists(path: str) -> bool:
    import os

    return os.path.isfile(path)


def _build_on_this_rank() -> bool:
    return True


def _rank_zero_first(build, cache_path):
    """With an on-disk index cache, rank 0 writes it first and the others then read it."""
    dist = torch.distributed
    if cache_path is None or not dist.is_initialized() or dist.get_world_size() == 1:
        return build()
    result = build() if dist.get_rank() == 0 else None
    dist.barrier()
    return result if dist.get_rank() == 0 else build()


def microbatch_iterator(
    dataset,
    consumed_samples: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    num_workers: int = 0,
) -> Iterator[dict]:
    """Endless iterator of this DP rank's micro-batches, in Megatron's order from consumed_samples."""
    sampler = MegatronBatchSampler(consumed_samples, micro_batch_size, dp_rank, dp_size)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
    return iter(loader)
