import hashlib
import socket

import pytest
import torch

from ndd.models import SpecDiffNetWeights, get_weights, load_default_model, load_model, save_model, spec_diff_net


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("member", list(SpecDiffNetWeights))
def test_shipped_weights_load_offline_and_match_their_hash(no_network, member):
    entry = member.value
    assert entry.path.is_file() and entry.path.stat().st_size < 40 * 2**20
    assert hashlib.sha256(entry.path.read_bytes()).hexdigest() == entry.sha256  # the definition, not ndd's
    payload = torch.load(entry.path, map_location="cpu", weights_only=True)  # plain data only
    assert set(payload) >= {"config", "model"}
    model = spec_diff_net(member)
    assert not model.training
    with torch.no_grad():
        out = model(torch.rand(1, 3, 40, 56))
    assert out.similarity.shape == (1, 35, 35)
    has_edges = entry.meta.get("edge_detector") is not None
    assert (out.edges is not None) == has_edges
    if has_edges:
        assert out.edges.shape == (1, 1, 40, 56) and 0 <= out.edges.min() and out.edges.max() <= 1


def test_default_is_the_edge_model(no_network):
    model = load_default_model()
    assert spec_diff_net("DEFAULT").config == model.config
    assert model.config.edge_detector == "vgg16_hed"


def test_weights_file_round_trip_and_errors(tmp_path):
    model = spec_diff_net(backbone="small_cnn", window=5, n_eigs=8)
    path = save_model(model, tmp_path / "m.pt")
    again = load_model(path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_model(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt"):
        load_model(bad)
    with pytest.raises(ValueError, match="unknown weights"):
        spec_diff_net("NOT_A_MODEL")


def test_get_weights_finds_every_member_by_any_spelling_of_its_name():
    # DEFAULT is the only alias: entries sharing a file differ by calibration or config
    assert [n for n, m in SpecDiffNetWeights.__members__.items() if m.name != n] == ["DEFAULT"]
    for name, member in SpecDiffNetWeights.__members__.items():
        for spelling in (name, name.lower(), f"SpecDiffNetWeights.{name}"):
            assert get_weights(spelling) is member
    assert get_weights("default") is SpecDiffNetWeights.DEFAULT
    for unknown in ("not_a_model", "", "bsds500.pt", "runs/bsds500"):
        assert get_weights(unknown) is None


def test_default_is_an_alias_and_meta_says_how_to_use_each_model():
    from ndd.inference import DEFAULT_MAX_SIDE

    assert SpecDiffNetWeights.DEFAULT is SpecDiffNetWeights.default()
    assert SpecDiffNetWeights.DEFAULT not in [m for m in SpecDiffNetWeights if m.name == "DEFAULT"]  # an alias
    for member in SpecDiffNetWeights:
        meta = member.value.meta
        assert meta["max_side"] == DEFAULT_MAX_SIDE and meta["grid_stride"] == 8
        cov, paper = meta["metrics"]["covering_ods_ois_best"], meta["metrics"]["paper_avg_max"]
        assert len(cov) == 3 and all(0 < v < 1 for v in (*cov, *paper))


def test_entry_config_is_applied_over_the_file_config():
    from ndd.models import load_model, spec_diff_net

    member = SpecDiffNetWeights.BSDS500_HED
    assert spec_diff_net(member).config.edge_scales == tuple(member.value.config["edge_scales"])
    plain = load_model(member.value.path)  # the file itself: one scale
    assert plain.config.edge_scales == (1.0,)
    assert load_model(member.value.path, edge_scales=(1.0, 2.0)).config.edge_scales == (1.0, 2.0)


@pytest.mark.parametrize("member", [m for m in SpecDiffNetWeights if m.value.edge_detector_from])
def test_borrowed_edge_detector_is_the_donors_and_the_rest_is_the_entrys_own(no_network, member):
    entry = member.value
    donor = SpecDiffNetWeights[entry.edge_detector_from].value
    own = torch.load(entry.path, map_location="cpu", weights_only=True)
    lent = torch.load(donor.path, map_location="cpu", weights_only=True)
    assert not any(k.startswith("edge_detector.") for k in own["model"])  # the file holds no second copy
    state = spec_diff_net(member).state_dict()
    edge_keys = {k for k in state if k.startswith("edge_detector.")}
    assert edge_keys == {k for k in lent["model"] if k.startswith("edge_detector.")} and edge_keys
    for key in edge_keys:
        assert torch.equal(state[key], lent["model"][key].float())
    calibrated = {f"log_{name}" for name in entry.calibration}
    for key, value in own["model"].items():
        if key not in calibrated:
            assert torch.equal(state[key], value.float()), key


def test_a_calibration_sets_learned_scalars_over_the_files_and_makes_a_member_of_its_own(tmp_path):
    import math

    from ndd.models.weights import WeightsEntry, _build, _read

    calibrated = [m for m in SpecDiffNetWeights if m.value.calibration]
    sharing = 0
    for member in calibrated:
        model = spec_diff_net(member)
        for name, value in member.value.calibration.items():
            assert math.isclose(float(getattr(model, name).detach()), value, rel_tol=1e-6)
        plain = load_model(member.value.path)  # the file itself keeps what training learned
        assert not math.isclose(float(plain.t.detach()), member.value.calibration["t"], rel_tol=1e-3)
        twins = [m for m in SpecDiffNetWeights if m.value.filename == member.value.filename and m is not member]
        assert all(m.name != member.name for m in twins)  # not an alias of the file's first entry
        sharing += bool(twins)
    assert sharing  # V3, V4, V5 re-calibrate V2's file (V6 its own)
    path = save_model(spec_diff_net(backbone="small_cnn", window=5, n_eigs=8), tmp_path / "m.pt")
    model = _build(_read(path), path, "cpu", {}, {"tau": 2.5})
    assert math.isclose(float(model.tau.detach()), 2.5, rel_tol=1e-6)
    for bad in ({"gamma": 1.0}, {"t": -1.0}, {"t": float("nan")}):
        with pytest.raises(ValueError, match="calibration"):
            _build(_read(path), path, "cpu", {}, bad)
    assert WeightsEntry("f.pt", "0", calibration={"t": 2.0}) != WeightsEntry("f.pt", "0")


@pytest.mark.parametrize("member", [m for m in SpecDiffNetWeights if m.value.edge_fusion])
def test_an_edge_fusion_entry_carries_its_heads_weights_and_refuses_other_scales(no_network, member):
    import dataclasses

    from ndd.models.edge_fusion import read_edge_fusion
    from ndd.models.weights import _payload_of

    entry = member.value
    filename, sha256 = entry.edge_fusion
    head = read_edge_fusion(entry.path.with_name(filename), sha256=sha256)
    model = spec_diff_net(member)
    assert model.config.edge_fusion_width == head["width"]
    assert tuple(model.config.edge_scales) == tuple(head["scales"])
    state = model.state_dict()
    for key, value in head["model"].items():
        assert torch.equal(state[f"edge_fusion.{key}"], value.float()), key
    without = [m for m in SpecDiffNetWeights if m.value == dataclasses.replace(entry, edge_fusion=None)]
    assert all(m.name != member.name for m in without)  # the head makes a member of its own
    assert without or member is not SpecDiffNetWeights.BSDS500_HED_V5  # V4 is V5 without its head
    wrong = dataclasses.replace(entry, config={**entry.config, "edge_scales": (1.0,)})
    with pytest.raises(ValueError, match="trained for edge scales"):
        _payload_of(wrong)
