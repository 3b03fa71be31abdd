"""Backbones: the Lite0 name mapping, real-photo classification, shapes, freezing, digests."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from multiflow.errors import CheckpointError, ConfigError
from multiflow.features.backbones import (
    build_backbone,
    efficientnet_pytorch_to_timm,
    lite0_package_weights_path,
)
from support.backbones import build_classifier


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("lite0", input_size=64)


def test_lite0_mapping_covers_every_tensor():
    import timm

    src = torch.load(lite0_package_weights_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = efficientnet_pytorch_to_timm(src, [len(s) for s in model.blocks])
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(mapped) == set(own)
    assert len(mapped) == 247
    assert all(mapped[k].shape == own[k].shape for k in own)
    # every source tensor except the batch counters is used exactly once
    assert len(mapped) == sum(1 for k in src if not k.endswith("num_batches_tracked"))
    # spot-check semantics: the expanding 1x1 conv of flat block 1 is timm's blocks.1.0.conv_pw
    assert torch.equal(mapped["blocks.1.0.conv_pw.weight"], src["_blocks.1._expand_conv.weight"])
    assert torch.equal(mapped["blocks.0.0.conv_pw.weight"], src["_blocks.0._project_conv.weight"])
    assert torch.equal(mapped["blocks.5.2.bn3.running_var"], src["_blocks.13._bn2.running_var"])
    assert torch.equal(mapped["blocks.6.0.conv_dw.weight"], src["_blocks.15._depthwise_conv.weight"])
    assert torch.equal(mapped["bn2.weight"], src["_bn1.weight"])


def test_mapping_rejects_unknown_and_out_of_range_keys():
    with pytest.raises(CheckpointError, match="unknown block module"):
        efficientnet_pytorch_to_timm({"_blocks.0._mystery.weight": torch.zeros(1)}, [1])
    with pytest.raises(CheckpointError, match="block 3"):
        efficientnet_pytorch_to_timm({"_blocks.3._bn1.weight": torch.zeros(1)}, [1, 2])
    with pytest.raises(CheckpointError, match="unknown top-level"):
        efficientnet_pytorch_to_timm({"head.weight": torch.zeros(1)}, [1])


def _imagenet_top5(model, mean, std, img) -> list[int]:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x).topk(5).indices[0].tolist()


def test_lite0_classifies_real_photographs():
    from skimage import data

    model, mean, std = build_classifier("lite0")
    cat = _imagenet_top5(model, mean, std, data.chelsea())
    assert 281 <= cat[0] <= 285  # tabby / tiger cat / Persian / Siamese / Egyptian cat
    coffee = _imagenet_top5(model, mean, std, data.coffee())
    assert coffee[0] == 967  # espresso


def test_lite0_extractor_shape_frozen_and_geometry(lite0):
    assert lite0.channels == 192 and lite0.stride == 32
    assert lite0.feature_size() == (2, 2)
    assert lite0.feature_size(768) == (24, 24) and lite0.feature_size(384) == (12, 12)
    x = torch.rand(3, 3, 50, 70, generator=torch.Generator().manual_seed(0))
    y = lite0(x)
    assert y.shape == (3, 192, 2, 2) and torch.isfinite(y).all()
    assert not any(p.requires_grad for p in lite0.parameters())
    lite0.train()
    assert not lite0.training and not lite0.body.training
    views = lite0.forward_views(x.view(1, 3, 3, 50, 70))
    assert views.shape == (1, 3, 192, 2, 2)
    assert torch.allclose(views[0], y, atol=1e-5)


def test_b5_random_weights_shapes():
    b5 = build_backbone("b5", pretrained=False, input_size=64)
    assert (b5.channels, b5.stride) == (304, 32)
    assert b5.feature_size(768) == (24, 24)  # the paper's 304 x 24 x 24
    assert b5(torch.rand(1, 3, 64, 64)).shape == (1, 304, 2, 2)
    assert b5.weights_source.startswith("random")


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = build_backbone("lite0", pretrained=False, input_size=64, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_backbone("lite0", pretrained=False, input_size=64, seed=1)
    c = build_backbone("lite0", pretrained=False, input_size=64, seed=2)
    assert a.digest == b.digest != c.digest


def test_digest_changes_with_weights(lite0):
    other = build_backbone("lite0", pretrained=False, input_size=64)
    assert other.digest != lite0.digest
    assert len(lite0.digest) == 64


def test_generic_timm_model_with_layer_spec():
    ext = build_backbone("resnet18", pretrained=False, layers="features:2", input_size=64)
    assert (ext.channels, ext.stride) == (128, 8)
    assert ext(torch.rand(1, 3, 64, 64)).shape == (1, 128, 8, 8)


def test_bad_specs_and_weights(tmp_path):
    with pytest.raises(ConfigError):
        build_backbone("resnet18", pretrained=False)  # no layer spec for a non-preset
    with pytest.raises(ConfigError):
        build_backbone("lite0", pretrained=False, layers="stage6")
    with pytest.raises(ConfigError):
        build_backbone("no_such_model_xyz", pretrained=False, layers="blocks:1")
    with pytest.raises(CheckpointError, match="not found"):
        build_backbone("lite0", weights=tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="bad.pth"):
        build_backbone("lite0", weights=bad)
    # a file for another architecture: names the mismatch
    with pytest.raises(CheckpointError, match="missing"):
        build_backbone("b5", weights=lite0_package_weights_path(), input_size=64)


def test_local_weights_file_equals_embedded_default(tmp_path, lite0):
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    src = torch.load(lite0_package_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(efficientnet_pytorch_to_timm(src, [len(s) for s in model.blocks]), strict=False)
    path = tmp_path / "lite0_timm.pth"
    torch.save(model.state_dict(), path)
    ext = build_backbone("lite0", weights=path, input_size=64)
    assert ext.digest == lite0.digest


def test_mapping_covers_b5_with_squeeze_excitation():
    """efficientnet_pytorch's B5 (the reference code's weights) names, written from its convention
    (stage 0 blocks do not expand; every block has SE), map onto exactly timm's B5 tensors."""
    import timm

    model = timm.create_model("tf_efficientnet_b5", pretrained=False)
    depths = [len(s) for s in model.blocks]
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names = ["_conv_stem.weight", "_conv_head.weight", "_fc.weight", "_fc.bias"]
    names += [f"_bn0.{p}" for p in bn] + [f"_bn1.{p}" for p in bn]
    flat = 0
    for stage, depth in enumerate(depths):
        for _ in range(depth):
            b = f"_blocks.{flat}."
            mods = ["_expand_conv.weight"] + [f"_bn0.{p}" for p in bn] if stage > 0 else []
            mods += ["_depthwise_conv.weight", "_se_reduce.weight", "_se_reduce.bias", "_se_expand.weight",
                     "_se_expand.bias", "_project_conv.weight"]
            mods += [f"_bn1.{p}" for p in bn] + [f"_bn2.{p}" for p in bn]
            names += [b + m for m in mods]
            flat += 1
    mapped = efficientnet_pytorch_to_timm({n: torch.zeros(1) for n in names}, depths)
    own = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(mapped) == own
    assert flat == 39 and sum(depths[:6]) == 36  # the paper's "36th block" is the end of stage 6


def test_two_stage_taps_equal_the_single_taps_resampled_and_concatenated(lite0):
    x = torch.rand(2, 3, 80, 80, generator=torch.Generator().manual_seed(0))
    fine = build_backbone("lite0", input_size=64, layers="blocks:3")
    multi = build_backbone("lite0", input_size=64, layers="blocks:3+blocks:5")
    assert multi.channels == fine.channels + lite0.channels and multi.stride == fine.stride
    assert multi.feature_size() == fine.feature_size() and multi.feature_size(96) == fine.feature_size(96)
    a, b = fine(x), lite0(x)
    want = torch.cat([a, F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)], dim=1)
    torch.testing.assert_close(multi(x), want)
    assert b.shape[-1] < a.shape[-1]  # the two stages really are on different grids
    # the coarse grid on request
    coarse = build_backbone("lite0", input_size=64, layers="blocks:3+blocks:5@blocks:5")
    assert coarse.feature_size() == lite0.feature_size()
    want = torch.cat([F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=False), b], dim=1)
    torch.testing.assert_close(coarse(x), want)
    # the layer spec is part of what defines the features (cache keys, bundle checks)
    assert multi.describe()["layers"] == "blocks:3+blocks:5" and multi.digest != lite0.digest
    assert coarse.digest == multi.digest and coarse.describe() != multi.describe()
    assert multi.forward_views(x[None]).shape == (1, 2, multi.channels, *multi.feature_size())


def test_two_feature_taps_of_a_generic_timm_model():
    single = [build_backbone("resnet18", pretrained=False, layers=f"features:{i}", input_size=64) for i in (1, 2)]
    multi = build_backbone("resnet18", pretrained=False, layers="features:1+features:2", input_size=64)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    a, b = single[0](x), single[1](x)
    want = torch.cat([a, F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)], dim=1)
    torch.testing.assert_close(multi(x), want)


@pytest.mark.parametrize(
    "spec", ["blocks:5+blocks:3", "blocks:3+blocks:3", "blocks:3+features:2", "blocks:3+blocks:5@blocks:4",
             "blocks:3+", "blocks:9+blocks:10"],
)
def test_bad_multi_tap_specs(spec):
    with pytest.raises(ConfigError):
        build_backbone("lite0", pretrained=False, layers=spec, input_size=64)
