"""The generator's output is pinned: refactoring the synth package (or adding opt-in defect codes or
variation) must not change a single byte of what the default and realistic presets render.

The hashes were computed with the generator before ``synth/scene.py`` was split (commit 215caba). A
deliberate change of the rendered output must update them *and* bump ``GENERATOR_VERSION``.
"""

from __future__ import annotations

import hashlib

import pytest

from multiflow.synth import DEFAULT_DEFECTS, FAMILIES, VARIATIONS, render_sample

#: sha256 over images, masks and silhouettes of (OK + the nine default codes) and FM, per family and preset.
PINNED: dict[tuple[str, str], str] = {
    ("bottle_cap", "default/fm"): "117965ba86309733875a0810b14e5b1e47804a16cf1e561fb6b0536e721dcbc9",
    ("bottle_cap", "default/standard"): "3b037cbd371d792e324021687d170e5c0065360478bf4fa59806dfe81850323f",
    ("bottle_cap", "realistic/fm"): "f6e9935c92f2e48e01f7a74f0e2a5058a4ff5b544d0b0c98ced24a1ffe377937",
    ("bottle_cap", "realistic/standard"): "631d8f609afdb6c64df0fb28a9b70735d65f2e8206a2a76b0ae609f795add4af",
    ("lock_nut", "default/fm"): "2d85bb696a56baeb47c8993e812ec65d3946ba7a73a63c9a6d2bb3e0cc6c5545",
    ("lock_nut", "default/standard"): "c0ebda6181aaecbd1373379c10689d561327fa5214d5c2cba1135fca9f86dde6",
    ("lock_nut", "realistic/fm"): "77272ddf508007dc8cae2c5b55f7858be3fcf3b887c44485ce722595303de970",
    ("lock_nut", "realistic/standard"): "0d47279293545c0edfc781b40e4d7c4abbee97d72d3c53c6816ba980f9a5cd2d",
    ("plastic_plug", "default/fm"): "6289bac6ab24481c9ea9bfcbfc83579ae304a9e69b3fa70073fd00a75519f61e",
    ("plastic_plug", "default/standard"): "90cb420ff969547f8d7051a7c9b8d72583479c9e235145815b622917cfe609a6",
    ("plastic_plug", "realistic/fm"): "71e3f4d02a575348e1da3f3f6a840ff41aa79bff1f5b2fd3043a9d1e85f206ab",
    ("plastic_plug", "realistic/standard"): "d06b06a2036f25f29781ac101a596026d224947b20b5842bc6372139db2aed37",
    ("terminal_block", "default/fm"): "e1d07ca26ae650ad0ff7568b50f9b1a158bb83f41342db82ff1d5bcef925f641",
    ("terminal_block", "default/standard"): "e20f1a126ca6bc4a19e9c9320ca81f4e1a90f7d4382841b317495781b5e439e3",
    ("terminal_block", "realistic/fm"): "577cc1d3d82394854e28efde8e4a58551225dd6b8b8e2af9ba7b2cae7261bccf",
    ("terminal_block", "realistic/standard"): "b0deaa9d8626d37584862d887a5452696dd23e6b3c21151556067bfa49942d85",
    ("toy_brick", "default/fm"): "632415b025006e863b53c85b4aacc4147e770f4246689fd276c4a7ebec17777a",
    ("toy_brick", "default/standard"): "24d775115e2a6d520b06a5ac1d46312be88662119d87df2dbb32d5b70dcda310",
    ("toy_brick", "realistic/fm"): "b31776c0799669c02a30cf3b3d9868234a799686aec361ce93068cfd4447d9ad",
    ("toy_brick", "realistic/standard"): "b390ad6ec65f252df483d453120559bf2d032af647cd5645a9d5ff8b0bc04063",
}


def render_hash(family: str, variation: str, codes: list[str | None], labels: bool = False) -> str:
    lots, pose_jitter = VARIATIONS[variation]
    h = hashlib.sha256()
    for code in codes:
        s = render_sample(family, defect=code, size=24, n_views=5, seed=11, sample_id=2, lots=lots,
                          pose_jitter=pose_jitter, labels=labels)
        for a in (s.images, s.masks, s.silhouettes):
            h.update(a.tobytes())
    return h.hexdigest()


CODES = {"standard": [None, *DEFAULT_DEFECTS], "fm": ["FM"]}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("variation", sorted(VARIATIONS))
@pytest.mark.parametrize("codes", sorted(CODES))
def test_renders_are_pinned(family, variation, codes):
    assert render_hash(family, variation, CODES[codes]) == PINNED[(family, f"{variation}/{codes}")]


#: The opt-in cross-view codes ML and LB (realistic preset; LB in a line with label variants), pinned
#: when they were added so that later refactors keep them too.
PINNED_CROSS_VIEW: dict[str, str] = {
    "bottle_cap": "eac5eb33eeab71f31b3e50e001f196eedd66c340799f8081a5711d9c67336200",
    "lock_nut": "3fc6ebdecda46f670e63bb5b265397e1abbace0414ac75dfd820ec7ac5f42ddb",
    "plastic_plug": "c620331e0cc694d4c8cce70cdac0bc6d14d4bb87034899ee16b558408b603404",
    "terminal_block": "ac990bda8391e7f1dd2c5348f343644c392cc2652f4b9799fc9c2db0c59f8552",
    "toy_brick": "d6e286a98130d48d9655b46a75e9fc4aa9865dc180dfa71b5d602043442ca924",
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_new_cross_view_codes_are_pinned(family):
    assert render_hash(family, "realistic", ["ML", "LB"], labels=True) == PINNED_CROSS_VIEW[family]
