"""MultiMNIST (Sener & Koltun 2018) and the multi-LeNet: the composition against the authors'
recipe computed here by hand, the MNIST reader against the official files and their MD5s, bad
files refused in one sentence, the network's parameter counts and dropout, and a short run that
learns both digits."""

import gzip
import hashlib

import numpy as np
import pytest
import torch

from helpers import MNIST_SAMPLE, needs_mnist_sample, train_and_read_test_metrics, untrained_and_trained
from medmtl.data import mnist_idx
from medmtl.data.multimnist import compose, compose_split, multimnist_tasks
from medmtl.errors import ConfigError, DatasetError
from medmtl.models.multi_lenet import MultiLeNet, UnscaledDropout


def hand_composed(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The authors' recipe, pixel by pixel: a 36 x 36 canvas, left at (0, 0), right at (6, 6), the
    brighter pixel where they overlap; byte-scaled to 0-255; nearest-neighbour 36 -> 28, output
    pixel i reading input pixel floor((i + 1/2) 36 / 28) (PIL's nearest, what imresize used)."""
    canvas = np.zeros((36, 36))
    for r in range(36):
        for c in range(36):
            a = left[r, c] if r < 28 and c < 28 else 0
            b = right[r - 6, c - 6] if 6 <= r < 34 and 6 <= c < 34 else 0
            canvas[r, c] = max(a, b)
    low, high = canvas.min(), canvas.max()
    scaled = np.floor((canvas - low) * 255.0 / (high - low) + 0.5)
    pick = np.floor((np.arange(28) + 0.5) * 36 / 28).astype(int)
    return scaled[np.ix_(pick, pick)].astype(np.uint8)


@pytest.mark.parametrize("seed", range(3))
def test_composition_follows_the_authors_recipe(seed):
    rng = np.random.default_rng(seed)
    left, right = (rng.integers(0, 256, size=(28, 28)) * (rng.random((28, 28)) > 0.6) for _ in range(2))
    np.testing.assert_array_equal(compose(left.astype(np.uint8), right.astype(np.uint8)), hand_composed(left, right))


def test_every_image_is_the_left_digit_of_one_pair_and_partners_are_drawn_from_the_split():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, size=50)
    pairs = compose_split(images, labels, seed=3)
    assert pairs["image"].shape == (50, 28, 28) and pairs["image"].dtype == np.uint8
    np.testing.assert_array_equal(pairs["left"], labels)
    assert set(pairs["right"]) <= set(labels)
    np.testing.assert_array_equal(compose_split(images, labels, seed=3)["image"], pairs["image"])  # reproducible
    assert not np.array_equal(compose_split(images, labels, seed=4)["right"], pairs["right"])


@needs_mnist_sample
def test_the_official_mnist_files_are_read_whole():
    """Counts and the official MD5s of the decompressed files (LeCun et al.'s, as torchvision lists them)."""
    official = {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    }
    for name, md5 in official.items():
        path = mnist_idx.find(MNIST_SAMPLE, name)
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        assert hashlib.md5(data).hexdigest() == md5
    images, labels = mnist_idx.read_split(MNIST_SAMPLE, "train")
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    assert mnist_idx.read_split(MNIST_SAMPLE, "test")[0].shape == (10000, 28, 28)
    assert labels[:5].tolist() == [5, 0, 4, 1, 9]  # MNIST's first training digits


def write_files(folder, images, labels, split="train"):
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    mnist_idx.write_idx(raw, split, images, labels)
    return raw


def test_written_files_read_back(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    write_files(tmp_path, images, np.array([1, 2, 3]))
    read_images, read_labels = mnist_idx.read_split(tmp_path, "train")
    np.testing.assert_array_equal(read_images, images)
    assert read_labels.tolist() == [1, 2, 3]


@pytest.mark.parametrize("fault", ["missing", "truncated", "magic", "counts", "label", "gzip"])
def test_a_bad_mnist_file_is_refused_in_one_sentence_naming_it(tmp_path, fault):
    raw = write_files(tmp_path, np.zeros((4, 28, 28), dtype=np.uint8), np.array([0, 1, 2, 3]))
    images, labels = raw / "train-images-idx3-ubyte.gz", raw / "train-labels-idx1-ubyte.gz"
    named = images
    if fault == "missing":
        images.unlink()
        named = "train-images-idx3-ubyte"
    elif fault == "truncated":
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
    elif fault == "magic":
        data = bytearray(gzip.decompress(labels.read_bytes()))
        data[2] = 9  # 2049 -> 2305
        labels.write_bytes(gzip.compress(bytes(data)))
        named = labels
    elif fault == "counts":
        mnist_idx.write_idx(raw, "train", np.zeros((5, 28, 28), dtype=np.uint8), np.zeros(5, dtype=np.int64))
        labels.write_bytes(gzip.compress((2049).to_bytes(4, "big") + (4).to_bytes(4, "big") + bytes(4)))
        named = labels
    elif fault == "label":
        labels.write_bytes(gzip.compress((2049).to_bytes(4, "big") + (4).to_bytes(4, "big") + bytes([0, 1, 12, 3])))
        named = labels
    elif fault == "gzip":
        images.write_bytes(images.read_bytes()[:30])
    with pytest.raises(DatasetError, match="MNIST file") as raised:
        mnist_idx.read_split(tmp_path, "train")
    assert str(named) in str(raised.value) and "\n" not in str(raised.value)


def test_multi_lenet_has_the_authors_layer_sizes():
    """By hand: encoder conv 1->10 (5x5) 260, conv 10->20 (5x5) 5,020, linear 320->50 16,050; head
    linear 50->50 2,550 and 50->10 510."""
    model = MultiLeNet(multimnist_tasks())
    assert sum(p.numel() for p in model.shared_parameters()) == 260 + 5020 + 16050
    assert all(sum(p.numel() for p in model.head_parameters(t)) == 2550 + 510 for t in ("left", "right"))
    outputs = model(torch.zeros(3, 1, 28, 28))
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {"left": (3, 10), "right": (3, 10)}
    assert model.representation(torch.zeros(3, 1, 28, 28))["features"].shape == (3, 50)


def test_linear_heads_are_one_50_to_10_layer_per_digit_read_out_for_bayesagg():
    """``head=linear``: the same encoder, each head 50 x 10 + 10 = 510 parameters, the layer
    ``readout_layer`` names; the two-layer heads have no such layer (one sentence)."""
    model = MultiLeNet(multimnist_tasks(), head="linear")
    assert sum(p.numel() for p in model.shared_parameters()) == 260 + 5020 + 16050
    for task in ("left", "right"):
        layer = model.readout_layer(task)
        assert {id(p) for p in model.head_parameters(task)} == {id(layer.weight), id(layer.bias)}
        assert sum(p.numel() for p in model.head_parameters(task)) == 510
    features = model.representation(torch.rand(3, 1, 28, 28))
    torch.testing.assert_close(model.heads(features)["left"], model.readout_layer("left")(features["features"]))
    with pytest.raises(ConfigError, match="no head that is one linear layer on a shared vector"):
        MultiLeNet(multimnist_tasks()).readout_layer("left")


def test_the_authors_dropout_drops_the_same_channels_for_the_whole_batch_unscaled():
    torch.manual_seed(0)
    channel = UnscaledDropout(per_batch=True)
    x = torch.ones(8, 20, 4, 4)
    dropped = channel(x)
    assert set(dropped.unique().tolist()) <= {0.0, 1.0}  # no 1/(1-p) rescaling
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))  # every sample the same channels
    assert 0 < dropped[0, :, 0, 0].sum() < 20
    assert torch.equal(channel.eval()(x), x)
    element = UnscaledDropout()
    varied = element(torch.ones(8, 50))
    assert not torch.equal(varied, varied[:1].expand_as(varied))


@pytest.mark.slow
def test_a_short_run_learns_both_digits_of_the_synthetic_twin(tmp_path):
    """Chance is 10%; after the tiny preset's 30 epochs both digits are far above it."""
    overrides = ["experiment=multimnist_sener2018", "preset=tiny", "optim=vanilla", "seed=0"]
    untrained, trained = untrained_and_trained(overrides, tmp_path)
    assert untrained["left_acc"] < 0.3 and untrained["right_acc"] < 0.3
    assert trained["left_acc"] > 0.45 and trained["right_acc"] > 0.4


@pytest.mark.slow
def test_bayesagg_learns_both_digits_with_linear_heads(tmp_path):
    """BayesAgg-MTL through the command line on MultiLeNet with one linear layer per digit: the
    warm-up epoch, then 29 epochs of its own steps (checkpoints carry its kept features); both
    digits far above chance (10%)."""
    overrides = ["experiment=multimnist_sener2018", "preset=tiny", "model.head=linear", "optim=bayesagg_mtl", "seed=0"]
    untrained, trained = untrained_and_trained(overrides, tmp_path)
    assert untrained["left_acc"] < 0.3 and untrained["right_acc"] < 0.3
    assert trained["left_acc"] > 0.35 and trained["right_acc"] > 0.35, trained


@pytest.mark.slow
@pytest.mark.real_data
@needs_mnist_sample
def test_one_epoch_on_the_real_mnist_learns_both_digits(tmp_path):
    """The reproduction's experiment on the official MNIST files (docs/results.md), one epoch of
    vanilla: both digits far above chance (10%); the 15-epoch runs reach about 95 / 93%."""
    test = train_and_read_test_metrics(
        [
            "experiment=multimnist_sener2018",
            "data=multimnist",
            f"data.root={MNIST_SAMPLE}",
            "optim=vanilla",
            "trainer=cpu",
            "trainer.max_epochs=1",
        ],
        tmp_path,
    )
    assert test["left_acc"] > 0.65 and test["right_acc"] > 0.65, test
