"""EpochSeededSampler: a permutation per (seed, epoch), independent of the global RNG once the epoch is set."""

import torch

from medmtl.data.sampling import EpochSeededSampler, split_key


def _pass(seed, epoch, n=10):
    sampler = EpochSeededSampler(n, seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_each_epoch_is_a_permutation_fixed_by_seed_and_epoch():
    keys = _pass(seed=1, epoch=0)
    assert sorted(i for i, _ in keys) == list(range(10))
    torch.manual_seed(123)  # the global RNG does not enter once the epoch is set
    assert _pass(seed=1, epoch=0) == keys
    assert _pass(seed=1, epoch=1) != keys and _pass(seed=2, epoch=0) != keys


def test_one_augmentation_seed_per_sample_and_shuffle_false_keeps_the_order():
    a, b = dict(_pass(seed=1, epoch=0)), dict(EpochSeededSampler(10, 1, shuffle=False).__iter__())
    assert len(set(a.values())) == 10  # one seed per sample
    assert list(b) == list(range(10))


def test_without_set_epoch_it_follows_the_global_rng_like_random_sampler():
    torch.manual_seed(5)
    first = list(EpochSeededSampler(10, 0))
    torch.manual_seed(5)
    assert list(EpochSeededSampler(10, 0)) == first
    assert list(EpochSeededSampler(10, 0)) != first


def test_split_key_accepts_plain_indices():
    assert split_key(4) == (4, None) and split_key((4, 9)) == (4, 9)


def test_skip_resumes_a_pass_where_it_stopped_once():
    sampler = EpochSeededSampler(10, seed=3)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.skip(4)
    assert list(sampler) == whole[4:]
    assert list(sampler) == whole, "skip applies to the next pass only"


def test_the_ranks_shares_of_a_pass_make_the_one_process_batches_of_r_times_the_size():
    """R = 3 ranks, batch B = 2, n = 20: the pass is cut to 18 keys; the ranks' shares are
    disjoint, and the union of the ranks' batch j is batch j (6 keys) of one process."""
    from medmtl.data.sampling import EpochSeededSampler

    n, ranks, batch = 20, 3, 2
    whole = EpochSeededSampler(n, seed=5, rank=0, world_size=1)
    whole.set_epoch(4)
    keys = list(whole)
    shares = []
    for rank in range(ranks):
        sampler = EpochSeededSampler(n, seed=5, rank=rank, world_size=ranks)
        sampler.set_epoch(4)
        shares.append(list(sampler))
        assert len(shares[-1]) == len(sampler) == n // ranks
    assert sorted(k for share in shares for k in share) == sorted(keys[: n - n % ranks])
    for j in range(len(shares[0]) // batch):
        union = [k for share in shares for k in share[j * batch : (j + 1) * batch]]
        assert sorted(union) == sorted(keys[j * batch * ranks : (j + 1) * batch * ranks])
