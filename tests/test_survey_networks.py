"""The survey's networks (Vandenhende et al. 2022) against references written here from the
survey's description and its code's layer list: parameter counts by hand, and outputs equal to a
reference forward with the same weights."""

import torch
from torch import nn
from torch.nn import functional as F

from medmtl.models.heads import ASPPHead
from medmtl.tasks import Task


def reference_deeplab_head(c: int, w: int, k: int) -> nn.ModuleDict:
    """The survey's DeepLabHead as its code lists it: ASPP (1x1; 3x3 at 12, 24, 36; image pooling
    1x1 -- each conv-BN-ReLU), projection 1x1 conv-BN-ReLU-Dropout(0.5), 3x3 conv-BN-ReLU, 1x1."""

    def cbr(i, o, kernel, dilation=1):
        return nn.Sequential(
            nn.Conv2d(i, o, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False), nn.BatchNorm2d(o), nn.ReLU()
        )

    return nn.ModuleDict(
        {
            "b1": cbr(c, w, 1),
            "b12": cbr(c, w, 3, 12),
            "b24": cbr(c, w, 3, 24),
            "b36": cbr(c, w, 3, 36),
            "pool": cbr(c, w, 1),
            "project": cbr(5 * w, w, 1),
            "conv": cbr(w, w, 3),
            "out": nn.Conv2d(w, k, 1),
        }
    )


def reference_forward(head: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
    pooled = head["pool"](F.adaptive_avg_pool2d(x, 1))
    pooled = F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)
    branches = [head[name](x) for name in ("b1", "b12", "b24", "b36")] + [pooled]
    projected = F.dropout(head["project"](torch.cat(branches, dim=1)), 0.5, training=head.training)
    return head["out"](head["conv"](projected))


def test_aspp_head_is_the_surveys_deeplab_head():
    c, w, k = 12, 8, 5
    ours = ASPPHead(c, Task("semseg", "semantic", lambda o, t: o, num_outputs=k), width=w)
    by_hand = c * w + 2 * w + 3 * (9 * c * w + 2 * w) + (c * w + 2 * w) + (5 * w * w + 2 * w) + (9 * w * w + 2 * w) + (w * k + k)
    assert sum(p.numel() for p in ours.parameters()) == by_hand
    reference = reference_deeplab_head(c, w, k)
    torch.manual_seed(0)
    for module in list(ours.modules()) + list(reference.modules()):
        if isinstance(module, nn.BatchNorm2d):  # statistics that are not the identity
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    ours_state = [v for k_, v in ours.state_dict().items() if "num_batches" not in k_]
    ref_keys = [k_ for k_ in reference.state_dict() if "num_batches" not in k_]
    # the same layers in the same order (the pooled branch after the three dilated ones in both)
    assert [tuple(v.shape) for v in ours_state] == [tuple(reference.state_dict()[key].shape) for key in ref_keys]
    reference.load_state_dict({**reference.state_dict(), **dict(zip(ref_keys, ours_state))})
    ours.eval(), reference.eval()
    x = torch.randn(2, c, 40, 40)
    torch.testing.assert_close(ours(x), reference_forward(reference, x))
    # training mode: the projection's Dropout(0.5) is active (the old head had none)
    ours.train()
    torch.manual_seed(1)
    first = ours(x)
    torch.manual_seed(2)
    assert not torch.allclose(first, ours(x))


def survey_tasks():
    from medmtl import losses

    return [Task("semseg", "semantic", losses.semantic_cross_entropy, num_outputs=40), Task("depth", "depth", losses.depth_l1)]


def test_hrnet_mtl_baseline_is_the_surveys_small_hrnet_with_its_high_resolution_heads():
    """The survey's code configures HRNet-W18-small-v2 (stages of 1/1/3/2 modules, blocks of 2;
    3.86 M parameters without ImageNet head) and puts a 1x1 conv-BN-ReLU-1x1 head on the 270
    concatenated channels. Table V: 4 M for the MTL baseline, 8 M for the two single-task networks."""
    from medmtl.models.base import SeparateNetworks
    from medmtl.models.mtl_baseline import MTLBaseline

    model = MTLBaseline(survey_tasks(), backbone="hrnet_w18_small_v2", input_normalization="none")
    head = 270 * 270 + 270 + 2 * 270  # 1x1 conv with bias, batch norm
    assert sum(p.numel() for p in model.heads_by_task["semseg"].parameters()) == head + 270 * 40 + 40
    assert sum(p.numel() for p in model.heads_by_task["depth"].parameters()) == head + 270 + 1
    total = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(total) == 4 and abs(sum(p.numel() for p in model.backbone.parameters()) / 1e6 - 3.86) < 0.005
    single = SeparateNetworks({t.name: MTLBaseline([t], backbone="hrnet_w18_small_v2") for t in survey_tasks()})
    assert round(sum(p.numel() for p in single.parameters()) / 1e6) == 8
    outputs = model(torch.zeros(1, 3, 64, 96))
    assert outputs["semseg"].shape == (1, 40, 64, 96) and outputs["depth"].shape == (1, 64, 96)


def test_nddr_cnn_has_the_survey_codes_five_units_and_batch_norm_momentum():
    """The survey's NDDR-CNN configuration fuses after the stem's convolution (64 channels) and
    after each of ResNet-50's four stages (256, 512, 1024, 2048); each unit has, per task, a 1x1
    conv T C -> C without bias and a batch norm (momentum 0.05). Cross-stitch fuses after the four
    stages only, one weight per task pair and channel. Table V: 102 M and 80 M with two tasks."""
    from medmtl.models.soft_sharing import NDDRCNN, CrossStitchNet

    tasks = survey_tasks()
    nddr = NDDRCNN(tasks, backbone="resnet50", input_normalization="none")
    stages = (64, 256, 512, 1024, 2048)
    assert [sum(p.numel() for p in unit.parameters()) for unit in nddr.units] == [2 * (2 * c * c + 2 * c) for c in stages]
    assert all(m.momentum == 0.05 for unit in nddr.units for m in unit.modules() if isinstance(m, nn.BatchNorm2d))
    first = nddr.units[0].fuse[0][0].weight[:, :, 0, 0]
    torch.testing.assert_close(first, torch.cat([0.9 * torch.eye(64), 0.1 * torch.eye(64)], dim=1))
    assert round(sum(p.numel() for p in nddr.parameters()) / 1e6) == 102
    stitch = CrossStitchNet(tasks, backbone="resnet50", input_normalization="none")
    assert [unit.alpha.numel() for unit in stitch.units] == [2 * 2 * c for c in stages[1:]]
    # 79.3 M: the survey's single-task ResNet-50 pair, which cross-stitch equals, is also 79.3 M here and "80" there
    assert abs(sum(p.numel() for p in stitch.parameters()) / 1e6 - 80) < 1
    out = NDDRCNN(tasks, backbone="test_resnet", aspp_width=8, input_normalization="none")(torch.zeros(2, 3, 32, 48))
    assert out["semseg"].shape == (2, 40, 32, 48)


def test_fusion_units_learn_at_a_hundred_times_the_rate_as_in_the_surveys_code():
    from functools import partial

    from medmtl.models.soft_sharing import NDDRCNN
    from medmtl.module import with_scaled_groups

    model = NDDRCNN(survey_tasks(), backbone="test_resnet", aspp_width=8, input_normalization="none")
    factory = with_scaled_groups(partial(torch.optim.SGD, lr=1e-3, momentum=0.9), model, {"fusion": 100, "backbone": None})
    rates = {id(p): group["lr"] for group in factory(model.parameters()).param_groups for p in group["params"]}
    assert all(rates[id(p)] == 0.1 for p in model.units.parameters())
    assert all(rates[id(p)] == 1e-3 for p in [*model.networks.parameters(), *model.heads_by_task.parameters()])
    assert len(rates) == len(list(model.parameters()))


def test_mti_net_blocks_have_the_survey_codes_parameter_counts():
    """MTI-Net's blocks counted by hand from the survey code's layer list (basic blocks with 1x1
    projections, the FPM's task-attention and squeeze-and-excitation, spatial-attention
    distillation, the HRNet head), on hrnet_tiny's widths 8/16/32/64 with semantic (40) + depth."""
    from medmtl.data.nyudv2 import nyudv2_tasks
    from medmtl.models.mtinet import MTINet

    tasks = nyudv2_tasks("nyud_mt", ["semseg", "depth"])
    model = MTINet(tasks, backbone="hrnet_tiny", input_normalization="none")
    c, n, outputs = [8, 16, 32, 64], 2, [40, 1]

    def block(i, o):  # conv3x3-BN-ReLU-conv3x3-BN (+ 1x1 conv-BN projection when i != o)
        return 9 * i * o + 2 * o + 9 * o * o + 2 * o + ((i * o + 2 * o) if i != o else 0)

    def se(ch):
        h = max(1, ch // 16)
        return ch * h + h + h * ch + ch

    def fpm(ch):
        s = n * ch
        return block(s, s // 4) + block(s // 4, s // 4) + (s // 4 * s + s) + block(s, ch) + n * se(ch)

    count = lambda module: sum(p.numel() for p in module.parameters())
    inputs = [c[s] + (c[s + 1] if s < 3 else 0) for s in range(4)]
    assert count(model.refinement) == n * sum(block(inputs[s], c[s]) + block(c[s], c[s]) for s in range(4))
    assert count(model.propagation) == sum(fpm(c[s]) for s in (1, 2, 3))
    assert count(model.initial_predictions) == sum(c[s] * k + k for s in range(4) for k in outputs)
    assert count(model.distillation) == sum(n * (n - 1) * 2 * 9 * c[s] ** 2 for s in range(4))
    total = sum(c)
    assert count(model.final) == sum(total * total + total + 2 * total + total * k + k for k in outputs)


def test_mti_net_feature_propagation_is_the_task_attention_written_from_the_paper():
    """The FPM's forward written here: concat -> f -> softmax -> weighted concat -> reduction ->
    per task SE(shared) + own features; same weights. The softmax as the authors' code groups it
    (consecutive channels), and as the paper words it (channel j of every task) with the option."""
    from medmtl.models.mtinet import FeaturePropagation

    torch.manual_seed(0)
    fpm = FeaturePropagation(["a", "b", "c"], 16).double().eval()
    features = {k: torch.randn(2, 16, 5, 7, dtype=torch.float64) for k in "abc"}
    concat = torch.cat([features[k] for k in "abc"], dim=1)  # channel j of task t at index t * 16 + j
    logits = fpm.non_linear(concat)
    exp = torch.exp(logits)
    code = exp / exp.view(2, 16, 3, 5, 7).sum(dim=2).repeat_interleave(3, dim=1)  # channel i with i // 3's group
    tasks = exp / exp.view(2, 3, 16, 5, 7).sum(dim=1).repeat(1, 3, 1, 1)  # channel j of every task
    for grouping, weights in (("code", code), ("tasks", tasks)):
        fpm.grouping = grouping
        shared = fpm.reduction(weights * concat)
        with torch.no_grad():
            out = fpm(features)
            for k in "abc":
                squeeze = fpm.excitation[k].squeeze
                gate = torch.sigmoid(squeeze[2](torch.relu(squeeze[0](shared.mean(dim=(2, 3))))))
                torch.testing.assert_close(out[k], shared * gate[:, :, None, None] + features[k], rtol=1e-12, atol=1e-12)


def test_pad_net_blocks_have_the_survey_codes_parameter_counts():
    """PAD-Net counted by hand from the survey code's layer list: per task two bottlenecks to the
    head width (1x1 projection on the first), a 1x1 initial prediction, spatial-attention
    distillation from every other task, two bottlenecks and a 1x1 final prediction; the HRNet
    variant's fuse (1x1 conv C -> C with bias, BN, ReLU) after the concatenated branches."""
    from medmtl.data.nyudv2 import nyudv2_tasks
    from medmtl.models.padnet import PADNet

    tasks = nyudv2_tasks("nyud_mt", ["semseg", "depth"])
    model = PADNet(tasks, backbone="hrnet_tiny", width=32, input_normalization="none")
    c, w, n, outputs = 8 + 16 + 32 + 64, 32, 2, [40, 1]

    def bottleneck(i, planes):  # 1x1 i->p, 3x3 p->p, 1x1 p->4p, three BNs
        return i * planes + 2 * planes + 9 * planes * planes + 2 * planes + planes * 4 * planes + 2 * 4 * planes

    def pair(i):
        return bottleneck(i, w // 4) + bottleneck(w, w // 4) + ((i * w + 2 * w) if i != w else 0)

    count = lambda module: sum(p.numel() for p in module.parameters())
    assert count(model.initial_features) == n * pair(c)
    assert count(model.initial_predictions) == sum(w * k + k for k in outputs)
    assert count(model.distillation) == n * (n - 1) * 2 * 9 * w * w
    assert count(model.final) == sum(pair(w) + w * k + k for k in outputs)
    assert count(model.backbone[1]) == c * c + c + 2 * c  # the fuse
