"""A recipe's own model (``model: {factory: ...}``, issue #39): imported from a module or a file, wrapped,
recorded in ``arch`` and rebuilt from it; the FCOS box-bias initialisation of a wrapped instance;
``recipe check`` importing and trying the factory and refusing stages the model cannot run; torchvision
backbone weights (``model.weights``) from a local file or torchvision's cache, never the network here."""

from __future__ import annotations

import logging
import textwrap
import urllib.error

import pytest
import torch

from compressdet.errors import RecipeError
from compressdet.models import ModelError, _factory, build_model, load_model, save_model, wrap_torchvision
from compressdet.models.torchvision_det import FCOS_BOX_BIAS_INIT, init_fcos_box_bias
from compressdet.recipe import parse_recipe

torch.set_num_threads(1)
HW = (128, 128)

FACTORY = '''
from torchvision.models import resnet18
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


def _fpn(c):
    return BackboneWithFPN(resnet18(weights=None), {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], c,
                           extra_blocks=LastLevelP6P7(c, c))


def build(num_classes, fpn_channels=64):
    return FCOS(_fpn(fpn_channels), num_classes)


def build_retina(num_classes, **kwargs):
    return RetinaNet(_fpn(64), num_classes)


def not_a_detector():
    return "hello"
'''

CUSTOM = '''
import torch
from torch import nn


class Custom(nn.Module):
    """A detector on the contract that is neither ShuffleDet nor a torchvision FCOS/RetinaNet."""

    family = "custom"
    export_outputs = ("out",)

    def __init__(self, num_classes, image_size):
        super().__init__()
        self.num_classes, self.image_size, self.arch = num_classes, tuple(image_size), {"name": "custom"}
        self.conv = nn.Conv2d(3, num_classes + 4, 3, stride=16, padding=1)

    def forward(self, x):
        return self.conv(x)

    def forward_with_features(self, x):
        return self.conv(x), x

    def priors(self, device=None):
        return torch.zeros(1, 4)

    def feature_taps(self):
        return []

    def build_loss(self):
        return nn.Identity()

    def loss(self, outputs, targets):
        return {"total": outputs.float().pow(2).mean()}

    def postprocessor(self, cfg=None):
        return lambda out, orig_sizes=None: [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                                              "labels": torch.zeros(0, dtype=torch.int64)} for _ in out]

    def postprocess(self, outputs, orig_sizes=None):
        return self.postprocessor()(outputs, orig_sizes)

    def distill_mask(self, gt_boxes, level_shapes=None, psi=0.5):
        return []

    def export_metadata(self):
        return {}


def build(num_classes, image_size):
    return Custom(num_classes, image_size)
'''


@pytest.fixture
def factory_file(tmp_path):
    p = tmp_path / "my_detector.py"
    p.write_text(FACTORY)
    return p


def _recipe(stages: str, model: str = "{factory: ./my_detector.py:build}") -> str:
    return textwrap.dedent(f"""\
        name: mine
        data: {{format: synth, image_size: [{HW[0]}, {HW[1]}], classes: [car, pedestrian]}}
        models:
          mine: {model}
        stages:
        """) + textwrap.indent(textwrap.dedent(stages), "  ")


# ------------------------------------------------------------------------------------------ spec


def test_parse_factory_tells_modules_from_files(tmp_path):
    mod = _factory.parse_factory("my_pkg.detectors:build")
    assert (mod.target, mod.attr, mod.is_file) == ("my_pkg.detectors", "build", False)
    f = _factory.parse_factory("sub/my_detector.py:Builder.make", base_dir=tmp_path)
    assert f.is_file and f.target == str((tmp_path / "sub" / "my_detector.py").resolve()) and f.attr == "Builder.make"
    assert f.short == "my_detector.py:Builder.make"
    for bad in ("my_pkg.detectors", "my_pkg:", "my-pkg:build", ":build", "pkg:not an identifier"):
        with pytest.raises(ModelError, match="factory"):
            _factory.parse_factory(bad)


# ------------------------------------------------------------------------------------------ build + rebuild


def test_file_factory_is_wrapped_recorded_and_rebuilt_from_arch(factory_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    det = _factory.build_from_factory("./my_detector.py:build", {"fpn_channels": 96}, image_size=HW,
                                      classes=["car", "pedestrian"])
    assert det.family == "fcos" and det.num_classes == 2
    # called with num_classes (its signature takes it) and the recipe's args
    assert det.det.backbone.out_channels == 96
    arch = det.arch
    assert arch["factory"] == f"{factory_file.resolve()}:build" and arch["args"] == {"fpn_channels": 96}
    assert arch["sha256"] == _factory.file_sha256(factory_file) and arch["classes"] == ["car", "pedestrian"]
    # the wrap started the box bias as the registered builders do
    assert torch.all(det.det.head.regression_head.bbox_reg.bias == FCOS_BOX_BIAS_INIT)

    with torch.no_grad():
        det.det.head.regression_head.bbox_reg.bias.fill_(0.25)  # "trained": the reload must keep it
    save_model(det, tmp_path / "m.pt")
    monkeypatch.setattr(_factory, "_FILE_MODULES", {})  # as a new process: imports the file again
    monkeypatch.chdir(tmp_path.parent)  # the recorded path is absolute
    back, _ = load_model(tmp_path / "m.pt")
    assert back.arch == arch
    assert torch.all(back.det.head.regression_head.bbox_reg.bias == 0.25)
    x = torch.randn(1, 3, *HW)
    for a, b in zip(det.eval()(x), back(x)):
        assert torch.equal(a, b)


def test_a_changed_factory_file_warns_naming_it_and_a_missing_one_is_an_error(factory_file, tmp_path, monkeypatch,
                                                                                 caplog):
    det = _factory.build_from_factory(str(factory_file) + ":build_retina", image_size=HW, classes=["a", "b"])
    assert det.family == "retinanet"
    save_model(det, tmp_path / "m.pt")
    factory_file.write_text(FACTORY + "\n# edited\n")
    monkeypatch.setattr(_factory, "_FILE_MODULES", {})
    with caplog.at_level(logging.WARNING, logger="compressdet.models"):
        load_model(tmp_path / "m.pt")
    assert any(str(factory_file) in r.getMessage() and "changed" in r.getMessage() for r in caplog.records)
    factory_file.unlink()
    monkeypatch.setattr(_factory, "_FILE_MODULES", {})
    with pytest.raises(ModelError, match=f"model factory file '{factory_file}' does not exist"):
        load_model(tmp_path / "m.pt")


def test_factory_errors_are_one_line_model_errors(factory_file, tmp_path):
    (tmp_path / "broken.py").write_text("import no_such_module_anywhere\n")
    with pytest.raises(ModelError, match=r"broken.py': import failed: ModuleNotFoundError: No module named"):
        _factory.build_from_factory(str(tmp_path / "broken.py") + ":build", image_size=HW, classes=["a"])
    with pytest.raises(ModelError, match="cannot be imported: ModuleNotFoundError.*PYTHONPATH"):
        _factory.build_from_factory("no_such_pkg_xyz.mod:build", image_size=HW, classes=["a"])
    with pytest.raises(ModelError, match="has no 'nope' \\(callables there: .*build"):
        _factory.build_from_factory(f"{factory_file}:nope", image_size=HW, classes=["a"])
    with pytest.raises(ModelError, match="returned a str: expected a torchvision FCOS"):
        _factory.build_from_factory(f"{factory_file}:not_a_detector", image_size=HW, classes=["a"])
    with pytest.raises(ModelError, match=r"failed with args \{'bogus': 1\}: TypeError"):
        _factory.build_from_factory(f"{factory_file}:build", {"bogus": 1}, image_size=HW, classes=["a"])


def test_a_contract_detector_from_a_factory_is_taken_as_it_is(tmp_path):
    (tmp_path / "custom.py").write_text(CUSTOM)
    det = _factory.build_from_factory(f"{tmp_path / 'custom.py'}:build", image_size=HW, classes=["a", "b"])
    assert type(det).__name__ == "Custom" and det.arch["name"] == "custom" and det.arch["factory"].endswith("custom.py:build")
    with pytest.raises(ModelError, match="num_classes=2, but data.classes has 3"):
        _factory.build_from_factory(f"{tmp_path / 'custom.py'}:build", {"num_classes": 2}, image_size=HW,
                                    classes=["a", "b", "c"])


# ------------------------------------------------------------------------------------------ FCOS box bias


def _tv_fcos():
    from torchvision.models.detection import fcos_resnet50_fpn

    return fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)


def test_wrap_starts_a_fresh_fcos_box_bias_and_keeps_a_trained_one(caplog):
    tv = _tv_fcos()
    bias = tv.head.regression_head.bbox_reg.bias
    assert torch.all(bias == 0)  # torchvision's own init
    wrap_torchvision(tv, image_size=HW, classes=["a", "b"])
    assert torch.all(bias == FCOS_BOX_BIAS_INIT)
    with torch.no_grad():
        bias.fill_(0.3)
    wrap_torchvision(tv, image_size=HW, classes=["a", "b"])  # trained / loaded: kept
    assert torch.all(bias == 0.3)
    wrap_torchvision(tv, image_size=HW, classes=["a", "b"], box_bias_init=True)
    assert torch.all(bias == FCOS_BOX_BIAS_INIT)
    with torch.no_grad():
        bias.zero_()
    wrap_torchvision(tv, image_size=HW, classes=["a", "b"], box_bias_init=False)  # opted out
    assert torch.all(bias == 0)
    # a head it cannot read: a warning (auto), an error when asked for
    tv.head.regression_head.bbox_reg = torch.nn.Identity()
    with caplog.at_level(logging.WARNING, logger="compressdet.models"):
        assert not init_fcos_box_bias(tv)
    assert any("box-bias initialisation" in r.getMessage() for r in caplog.records)
    with pytest.raises(ModelError, match="regression_head.bbox_reg"):
        init_fcos_box_bias(tv, True)


# ------------------------------------------------------------------------------------------ recipes


def test_recipe_factory_fields_are_checked(factory_file):
    for model, msg in [("{arch: fcos_r18, factory: ./my_detector.py:build}", "either 'arch'.*not both"),
                       ("{width: 0.5}", "neither"),
                       ("{arch: fcos_r18, args: {a: 1}}", "args: only with 'factory'"),
                       ("{factory: ./my_detector.py:build, weights: DEFAULT}", "weights: not with 'factory'"),
                       ("{arch: shuffledet_0.25x, weights: DEFAULT}", "takes no torchvision weights"),
                       ("{arch: fcos_r18, weights: ./nope.pth}", "weights: file './nope.pth' does not exist"),
                       ("{arch: fcos_r18, weights: IMAGENET9K}", r"r.yaml:4: models.mine.weights: 'fcos_r18': weights "
                                                                  "'IMAGENET9K' is not one of ResNet18_Weights's"),
                       ("{arch: fcos_mnv2_050, weights: DEFAULT}", "no pretrained weights for backbone 'mnv2_050'")]:
        with pytest.raises(RecipeError, match=msg):
            parse_recipe(_recipe("- {name: t, kind: train, model: mine}", model), source=str(factory_file.parent / "r.yaml"))


def test_recipe_check_imports_the_factory_relative_to_the_recipe_and_names_the_line(factory_file, tmp_path):
    src = str(tmp_path / "r.yaml")
    ok = parse_recipe(_recipe("- {name: t, kind: train, model: mine}"), source=src)
    assert ok.models["mine"].factory == "./my_detector.py:build"
    # the copy a run folder keeps names the file absolutely
    assert ok.to_yaml_dict()["models"]["mine"]["factory"] == f"{factory_file.resolve()}:build"
    (tmp_path / "bad.py").write_text("raise RuntimeError('no GPU here')\n")
    with pytest.raises(RecipeError, match=r"r.yaml:4: models.mine.factory: model factory file .*bad.py': import "
                                          r"failed: RuntimeError: no GPU here"):
        parse_recipe(_recipe("- {name: t, kind: train, model: mine}", "{factory: ./bad.py:build}"), source=src)
    # built on a dummy batch: GroupNorm(32) over 32 channels cannot train on P7's single cell
    with pytest.raises(RecipeError, match="does not run on a dummy 128x128 batch: ValueError: Expected more than 1"):
        parse_recipe(_recipe("- {name: t, kind: train, model: mine}",
                             "{factory: ./my_detector.py:build, args: {fpn_channels: 32}}"), source=src)


def test_recipe_check_refuses_stages_a_custom_detector_cannot_run(tmp_path, factory_file):
    (tmp_path / "custom.py").write_text(CUSTOM)
    stages = """\
        - {name: t, kind: train, model: mine}
        - {name: p, kind: prune, from: t}
        - {name: q, kind: ptq, from: t}
        - {name: e, kind: export, from: t, formats: [onnx], with_postprocess: true}
        - {name: s, kind: train, model: mine, teacher: t, distill: [{method: crosskd}]}
        """
    with pytest.raises(RecipeError) as e:
        parse_recipe(_recipe(stages, "{factory: ./custom.py:build}"), source=str(tmp_path / "r.yaml"))
    msg = str(e.value)
    for name, why in [("p", "channel pruning"), ("q", "INT8 quantization"), ("e", "detection_graph"),
                      ("s", "crosskd")]:
        assert f"stage '{name}' (" in msg and why in msg
    assert "stage 't'" not in msg
    # the same chain on a wrapped torchvision FCOS: every stage kind is supported
    parse_recipe(_recipe(stages), source=str(tmp_path / "r.yaml"))


# ------------------------------------------------------------------------------------------ weights


def test_backbone_weights_from_a_local_file_are_loaded_with_the_first_conv_folded(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    net = resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    model = build_model("fcos_r18", image_size=HW, num_classes=2, weights=str(tmp_path / "r18.pth"))
    body = model.det.backbone.body
    assert torch.equal(body.layer3[1].conv2.weight, net.layer3[1].conv2.weight)
    assert torch.equal(body.bn1.running_var, net.bn1.running_var)
    # BGR 0-255 minus mean in, RGB normalised expected: channels reversed, divided by 255 * std
    x = torch.randn(1, 3, 16, 16) * 50
    rgb = x.flip(1) / 255 / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(body.conv1(x), net.conv1(rgb), atol=1e-4)
    with pytest.raises(ModelError, match="weights file 'nope.pth' does not exist"):
        build_model("fcos_r18", image_size=HW, weights="nope.pth")
    with pytest.raises(ModelError, match="does not fit the mnv3_small backbone"):
        build_model("fcos_mnv3_small", image_size=HW, weights=str(tmp_path / "r18.pth"))


def test_backbone_weight_names_come_from_torchvisions_cache_and_offline_name_the_file(tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights, resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    file = ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    place = tmp_path / "torch" / "hub" / "checkpoints" / file
    with pytest.raises(ModelError, match=f"cannot be downloaded \\(URLError\\); download .*{file} and place it at {place}"):
        build_model("retinanet_r18", image_size=HW, weights="DEFAULT")
    with pytest.raises(ModelError, match="not one of ResNet18_Weights.s: DEFAULT, IMAGENET1K_V1$"):
        build_model("retinanet_r18", image_size=HW, weights="IMAGENET9K")
    with pytest.raises(ModelError, match="no pretrained weights for backbone 'mnv2_050'"):
        build_model("fcos_mnv2_050", image_size=HW, weights="DEFAULT")
    place.parent.mkdir(parents=True)
    net = resnet18(weights=None)
    torch.save(net.state_dict(), place)  # in the cache: read from there, the network never asked
    model = build_model("retinanet_r18", image_size=HW, weights="IMAGENET1K_V1")
    assert torch.equal(model.det.backbone.body.layer4[0].conv1.weight, net.layer4[0].conv1.weight)


def test_an_edited_factory_file_changes_the_stage_fingerprints(factory_file, tmp_path):
    from compressdet.pipeline import recipe_fingerprints

    text = _recipe("""\
        - {name: t, kind: train, model: mine}
        - {name: p, kind: prune, from: t}
        """)
    before = recipe_fingerprints(parse_recipe(text, source=str(tmp_path / "r.yaml"), check_paths=False))
    factory_file.write_text(FACTORY.replace("fpn_channels=64", "fpn_channels=96"))
    after = recipe_fingerprints(parse_recipe(text, source=str(tmp_path / "r.yaml"), check_paths=False))
    assert before["t"] != after["t"] and before["p"] != after["p"]  # --resume re-runs them, not reuse stale ones


def test_recipe_check_notes_a_weight_name_missing_from_torchvisions_cache(tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    recipe = parse_recipe(_recipe("- {name: t, kind: train, model: mine}", "{arch: fcos_r18, weights: DEFAULT}"),
                          source=str(tmp_path / "r.yaml"))
    file = ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    place = tmp_path / "torch" / "hub" / "checkpoints" / file
    assert any(f"place it at {place}" in a for a in recipe.advisories())
    place.parent.mkdir(parents=True)
    place.write_bytes(b"")
    assert not any("model.weights" in a for a in recipe.advisories())
