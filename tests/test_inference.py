import dataclasses

import numpy as np
import pytest
import torch

from ndd.inference import HierarchyOptions, points_to_nodes, segment_image, similarity_maps, working_size
from ndd.models import SpecDiffNet, SpecDiffNetConfig
from ndd.segment import GridClustering, labels_from_ucm2, segment_from_similarity


pytestmark = pytest.mark.usefixtures("one_thread")


def two_tone(h=48, w=64):
    img = np.zeros((h, w, 3), np.float32)
    img[:, : w // 2] = (0.9, 0.2, 0.1)
    img[:, w // 2 :] = (0.1, 0.3, 0.9)
    img[h // 2 :, : w // 4] = (0.2, 0.8, 0.2)
    return img


def handcrafted():
    return SpecDiffNet(SpecDiffNetConfig.handcrafted(window=5, n_eigs=20))


def test_working_size_caps_longest_side():
    assert working_size((321, 481), 481) == (321, 481)
    assert working_size((1000, 2000), 500) == (250, 500)
    assert working_size((10, 10), None) == (10, 10)


def test_segment_image_levels_nested_and_ucm2_consistent():
    img = two_tone()
    result = segment_image(img, handcrafted(), max_side=None)
    hier = result.hierarchy
    assert hier.shape == (48, 64)
    n = hier.n_segments
    assert n >= 3
    levels = result.levels(list(range(1, n + 1)))
    for coarse, fine in zip(levels, levels[1:]):
        # every fine segment lies inside one coarse segment
        pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
        assert len(np.unique(pairs[0])) == pairs.shape[1]
    ucm2 = result.to_ucm2()
    assert ucm2.shape == (97, 129) and 0 <= ucm2.min() and ucm2.max() <= 1
    counts = {len(np.unique(labels_from_ucm2(ucm2, t))) for t in np.linspace(0.01, 0.99, 99)}
    assert counts <= set(range(1, n + 1))
    # The three colour regions are separated at the 3-segment level.
    three = result.levels([3])[0]
    assert len({three[5, 5], three[5, 60], three[40, 5]}) == 3


def test_large_image_is_processed_at_capped_size_and_mapped_back():
    img = np.kron(two_tone(24, 32), np.ones((4, 4, 1))).astype(np.float32)  # 96 x 128
    result = segment_image(img, handcrafted(), max_side=64)
    assert result.working_size == (48, 64)
    assert result.hierarchy.shape == (96, 128)
    # the edge map comes back at the image's size (bilinear); a model without one has none
    with pytest.raises(ValueError, match="no edge map"):
        result.edge_map()
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (48, 1))
    edges = dataclasses.replace(result, edges=ramp).edge_map()
    assert edges.shape == (96, 128) and edges.dtype == np.float32 and 0 <= edges.min() and edges.max() <= 1
    # bilinear, pixel centres aligned (align_corners=False): output column j samples j / 2 - 0.25,
    # clamped to the map; a linear ramp is reproduced exactly there
    expected = np.clip(np.arange(128) / 2 - 0.25, 0, 63) / 63
    assert np.allclose(edges, expected[None, :].repeat(96, 0), atol=1e-6)
    full = np.tile(np.linspace(0, 1, 128, dtype=np.float32), (96, 1))
    assert dataclasses.replace(result, edges=full).edge_map() is full  # already at the image's size


def test_similarity_maps_shape_range_and_peak():
    img = two_tone()
    maps, points = similarity_maps(img, handcrafted(), [(5, 5), (60, 10)], max_side=None)
    assert maps.shape == (2, 48, 64)
    assert maps.min() >= 0 and maps.max() <= 1
    # A pixel is most similar to its own region.
    assert maps[0, 5, 10] > maps[0, 5, 60]
    assert maps[1, 5, 60] > maps[1, 5, 10]
    sheet, pts = similarity_maps(img, handcrafted(), all_grid=2, max_side=None)
    assert sheet.shape == (4, 48, 64) and len(pts) == 4
    with pytest.raises(ValueError, match="outside"):
        similarity_maps(img, handcrafted(), [(100, 5)], max_side=None)


def test_points_to_nodes_corners():
    nodes = points_to_nodes([(0, 0), (63, 47)], (48, 64), (6, 8))
    assert nodes.tolist() == [0, 47]


def test_points_to_nodes_stride_geometry():
    # node j of a ceil(H / 8) grid sits on pixel 8 j: pixel 4 is half-way and goes up
    nodes = points_to_nodes([(3, 3), (4, 4), (12, 0), (63, 44)], (45, 64), (6, 8))
    assert nodes.tolist() == [0, 1 * 8 + 1, 2, 5 * 8 + 7]


def test_superpixel_method_needs_edges_and_gives_a_pixel_hierarchy():
    img = two_tone()
    with pytest.raises(ValueError, match="edge map"):
        segment_image(img, handcrafted(), max_side=None, method="superpixels")
    model = SpecDiffNet(SpecDiffNetConfig.handcrafted(window=5, n_eigs=20, edge_detector="vgg16_hed"))
    # an untrained HED head is a constant 0.5; give its fused layer the image's own contrast
    with torch.no_grad():
        model.edge_detector.dsn1.weight.normal_(0, 1, generator=torch.Generator().manual_seed(0))
    result = segment_image(img, model, max_side=None)
    assert result.grid_hierarchy is None  # "auto" picked the superpixel method
    hier = result.hierarchy
    assert hier.shape == (48, 64) and hier.n_segments >= 2
    levels = result.levels(list(range(1, hier.n_segments + 1)))
    for coarse, fine in zip(levels, levels[1:]):
        pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
        assert len(np.unique(pairs[0])) == pairs.shape[1]
    u = result.to_ucm2()
    assert u.shape == (97, 129)
    grid = segment_image(img, model, max_side=None, method="grid")
    assert grid.grid_hierarchy is not None


def edge_model_counting_diffusion(monkeypatch):
    """A two-tone image, a model with a (seeded) HED edge map, and a list that grows by one per
    call of the spectral block (its precision: 1 for float64, 0.5 for float32)."""
    from ndd import spectral

    img = two_tone()
    model = SpecDiffNet(SpecDiffNetConfig.handcrafted(window=5, n_eigs=20, edge_detector="vgg16_hed"))
    with torch.no_grad():
        model.edge_detector.dsn1.weight.normal_(0, 1, generator=torch.Generator().manual_seed(0))
    calls = []
    diffusion = spectral.diffusion
    precision = {torch.float64: 1, torch.float32: 0.5}
    monkeypatch.setattr(spectral, "diffusion",
                        lambda *a, **k: calls.append(precision[k["spectral_dtype"]]) or diffusion(*a, **k))
    return img, model, calls


def test_superpixels_merged_by_features_skip_the_spectral_block_with_the_same_result(monkeypatch):
    from ndd import spectral

    img, model, calls = edge_model_counting_diffusion(monkeypatch)
    skipped = segment_image(img, model, max_side=None).to_ucm2()
    assert calls == []  # the default hierarchy never reads D
    out = model(torch.from_numpy(img).permute(2, 0, 1)[None])  # all of it, as before the skip
    assert calls == [1] and out.similarity is not None
    from ndd.segment import segment_from_edges

    opts = HierarchyOptions()
    K = spectral.feature_kernel(out.embedding, model.config.merge_mu_scale * model.mu)[0]
    whole = segment_from_edges(out.edges[0, 0].numpy(), K, out.grid_shape, min_size=round(opts.min_region * 48 * 64),
                               small_edge_weight=opts.small_edge_weight, small_size=opts.small_region * 48 * 64)
    assert np.array_equal(skipped, whole.to_ucm2(values="height"))
    segment_image(img, model, max_side=None, merge_by="diffusion")  # K_D asked for: computed, in float32
    assert calls == [1, 0.5]


def test_authors_preset_is_the_grid_method_with_their_choices():
    img = two_tone()
    model = handcrafted()
    result = segment_image(img, model, max_side=None, options=HierarchyOptions.authors(highres=False))
    assert result.grid_hierarchy is not None and result.grid_hierarchy.n_segments <= 9
    # the same as spelling their choices out: clustering preset, merging by the banded kernel W
    with torch.no_grad():
        out = model(torch.from_numpy(img).permute(2, 0, 1)[None], eigenpairs=False)
    want = segment_from_similarity(out.similarity[0].float(), out.grid_shape,
                                   merge_similarity=out.affinity.to_dense()[0],
                                   coverage_threshold=HierarchyOptions().coverage_threshold,
                                   clustering=GridClustering.authors())
    assert np.array_equal(result.grid_hierarchy.merges, want.merges)
    assert np.array_equal(result.grid_hierarchy.finest, want.finest)
    assert HierarchyOptions.authors(coverage_threshold=0.02).coverage_threshold == 0.02
    with pytest.raises(ValueError, match="merge_by"):
        segment_image(img, model, max_side=None, merge_by="nearest")


def test_default_ucm2_reaches_every_level_of_the_hierarchy():
    img = two_tone()
    result = segment_image(img, handcrafted(), max_side=None)
    hier = result.hierarchy
    assert hier.n_segments <= 99
    u = result.to_ucm2()
    found = {}
    for t in np.linspace(0.01, 0.99, 99):
        labels = labels_from_ucm2(u, t)
        found.setdefault(int(labels.max()) + 1, labels)
    assert set(found) == set(range(1, hier.n_segments + 1))
    for k, labels in found.items():  # and each is exactly that level of the hierarchy
        pairs = np.unique(labels.ravel() * (k + 1) + hier.labels_at(k).ravel())
        assert len(pairs) == k


def test_merge_mu_scale_comes_from_the_model_unless_overridden():
    rng = np.random.default_rng(0)
    img = np.clip(two_tone() + rng.normal(0, 0.08, (48, 64, 3)), 0, 1).astype(np.float32)
    plain = handcrafted()
    scaled = SpecDiffNet(SpecDiffNetConfig.handcrafted(window=5, n_eigs=20, merge_mu_scale=0.5))
    by_config = segment_image(img, scaled, max_side=None).hierarchy
    by_option = segment_image(img, plain, max_side=None, merge_mu_scale=0.5).hierarchy
    unscaled = segment_image(img, plain, max_side=None).hierarchy
    np.testing.assert_array_equal(by_config.similarities, by_option.similarities)
    np.testing.assert_array_equal(by_config.merges, by_option.merges)
    assert not np.allclose(by_option.similarities, unscaled.similarities)
    np.testing.assert_array_equal(segment_image(img, plain, max_side=None, merge_mu_scale=1.0).hierarchy.merges,
                                  unscaled.merges)
    with pytest.raises(ValueError, match="merge_mu_scale"):
        SpecDiffNetConfig(merge_mu_scale=0.0)


def test_a_diffusion_weight_mixes_k_d_into_the_merging_kernel(monkeypatch):
    from ndd import spectral
    from ndd.segment import segment_from_edges

    img, model, calls = edge_model_counting_diffusion(monkeypatch)
    mixed = segment_image(img, model, max_side=None, diffusion_weight=0.4).to_ucm2()
    assert calls == [0.5]  # K_D is read now: the spectral block runs once, in float32 (no gradient)
    with torch.no_grad():
        out = model(torch.from_numpy(img).permute(2, 0, 1)[None], spectral_dtype="float32")
    K = 0.6 * spectral.feature_kernel(out.embedding, model.config.merge_mu_scale * model.mu)[0] + 0.4 * out.similarity[0]
    opts = HierarchyOptions()
    whole = segment_from_edges(out.edges[0, 0].numpy(), K, out.grid_shape, min_size=round(opts.min_region * 48 * 64),
                               small_edge_weight=opts.small_edge_weight, small_size=opts.small_region * 48 * 64)
    assert np.array_equal(mixed, whole.to_ucm2(values="height"))
    # the model's own weight is the default; 0 turns it off
    model.config = dataclasses.replace(model.config, merge_diffusion_weight=0.4)
    assert np.array_equal(segment_image(img, model, max_side=None).to_ucm2(), mixed)
    calls.clear()
    segment_image(img, model, max_side=None, diffusion_weight=0.0)
    assert calls == []
    with pytest.raises(ValueError, match="diffusion_weight"):
        segment_image(img, model, max_side=None, diffusion_weight=1.5)
    with pytest.raises(ValueError, match="merge_diffusion_weight"):
        SpecDiffNetConfig(merge_diffusion_weight=-0.1)


def test_a_diffusion_tau_replaces_k_d_by_exp_minus_tau_d_in_the_merging_kernel(monkeypatch):
    from ndd import spectral
    from ndd.segment import segment_from_edges

    img, model, calls = edge_model_counting_diffusion(monkeypatch)
    with torch.no_grad():
        out = model(torch.from_numpy(img).permute(2, 0, 1)[None], spectral_dtype="float32")
    Kf = spectral.feature_kernel(out.embedding, model.config.merge_mu_scale * model.mu)[0]
    opts = HierarchyOptions()

    def reference(share):
        K = 0.7 * Kf + 0.3 * share
        return segment_from_edges(out.edges[0, 0].numpy(), K, out.grid_shape,
                                  min_size=round(opts.min_region * 48 * 64), small_edge_weight=opts.small_edge_weight,
                                  small_size=opts.small_region * 48 * 64).to_ucm2(values="height")

    # a tau far from the model's makes another hierarchy on this image, so the check can fail
    tau = 25.0 * float(model.tau)
    given = segment_image(img, model, max_side=None, diffusion_weight=0.3, diffusion_tau=tau).to_ucm2()
    assert np.array_equal(given, reference(torch.exp(-tau * out.distance[0])))
    assert not np.array_equal(given, reference(out.similarity[0]))
    # the model's own merge tau is the default; without one, K_D itself
    model.config = dataclasses.replace(model.config, merge_diffusion_weight=0.3, merge_diffusion_tau=tau)
    assert np.array_equal(segment_image(img, model, max_side=None).to_ucm2(), given)
    model.config = dataclasses.replace(model.config, merge_diffusion_tau=None)
    assert np.array_equal(segment_image(img, model, max_side=None).to_ucm2(), reference(out.similarity[0]))
    calls.clear()
    with pytest.raises(ValueError, match="diffusion_tau"):
        segment_image(img, model, max_side=None, diffusion_tau=0.0)
    assert calls == []  # refused before the network ran
    with pytest.raises(ValueError, match="merge_diffusion_tau"):
        SpecDiffNetConfig(merge_diffusion_tau=-1.0)


def test_similarity_skips_an_edge_map_its_affinity_does_not_read(monkeypatch):
    from ndd.inference import similarity_maps

    img = two_tone()
    model = SpecDiffNet(SpecDiffNetConfig.handcrafted(window=5, n_eigs=20, edge_detector="vgg16_hed")).eval()
    calls = []
    edge_map = model.edge_detector.edge_map
    monkeypatch.setattr(model.edge_detector, "edge_map", lambda *a, **k: calls.append(1) or edge_map(*a, **k))
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    with torch.no_grad():
        whole, without = model(x), model(x, edges=False)
    assert calls == [1] and without.edges is None and whole.edges is not None
    assert torch.equal(whole.similarity, without.similarity)
    maps, _ = similarity_maps(img, model, [(10, 10)], max_side=None)
    assert calls == [1] and maps.shape == (1, 48, 64)
    with torch.no_grad():
        assert torch.equal(model.embed(x)[0], whole.embedding) and calls == [1]  # nor does embed()
    contour = SpecDiffNet(SpecDiffNetConfig.handcrafted(window=5, n_eigs=20, edge_detector="vgg16_hed",
                                                        affinity="features+contour")).eval()
    with torch.no_grad():
        assert contour(x, edges=False).edges is not None  # this affinity reads the map: still computed


def test_int8_edges_are_the_cpu_default_only_for_the_shipped_models_that_say_so(tmp_path, monkeypatch):
    from ndd.inference import load_segmentation_model, resolve_int8_edges
    from ndd.models import SpecDiffNetWeights, save_model
    from ndd.models import vgg16_hed

    x86 = vgg16_hed.int8_supported()
    assert x86 == (torch.backends.quantized.engine in ("x86", "fbgemm"))  # this PyTorch still has the layers
    says_so = {m.name for m in SpecDiffNetWeights if m.value.cpu_int8_edges}
    # V5, whose int8 segmentation was checked on val, and V6, V5's edge pathway with another embedding
    assert says_so == {"BSDS500_HED_V5", "BSDS500_HED_V6"}
    for spec in (None, "default", "bsds500_hed_v5", "SpecDiffNetWeights.BSDS500_HED_V5", "bsds500_hed_v6"):
        assert resolve_int8_edges(spec, "cpu") == x86, spec
    for spec in ("bsds500", "bsds500_hed_v4", "handcrafted", "no_such_model"):
        assert not resolve_int8_edges(spec, "cpu"), spec
    checkpoint = save_model(handcrafted(), tmp_path / "default")  # a file named like the model: a checkpoint
    assert not resolve_int8_edges(str(checkpoint), "cpu")
    if x86:
        model, description = load_segmentation_model()
        assert model.edge_detector.__dict__["_int8_trunk"] is not None and description.endswith("HED trunk in int8")
    model, description = load_segmentation_model(None, int8_edges=False)
    assert model.edge_detector.__dict__["_int8_trunk"] is None and "int8" not in description
    monkeypatch.setattr(vgg16_hed, "int8_supported", lambda: False)  # an ARM CPU, a PyTorch without int8
    assert not resolve_int8_edges(None, "cpu")


def test_small_region_options_reach_the_superpixel_merging(monkeypatch):
    import ndd.inference as inference

    img, model, _ = edge_model_counting_diffusion(monkeypatch)
    seen = []
    original = inference.segment_from_edges
    monkeypatch.setattr(inference, "segment_from_edges", lambda *a, **k: seen.append(k) or original(*a, **k))
    default = segment_image(img, model, max_side=None)
    assert seen[-1]["small_edge_weight"] == HierarchyOptions().small_edge_weight
    assert seen[-1]["small_size"] == pytest.approx(HierarchyOptions().small_region * 48 * 64)
    segment_image(img, model, max_side=None, small_edge_weight=0.5, small_region=0.1)
    assert seen[-1]["small_edge_weight"] == 0.5 and seen[-1]["small_size"] == pytest.approx(0.1 * 48 * 64)
    # the schedule at the edge weight itself is one weight for every pair: the hierarchy without it
    same = segment_image(img, model, max_side=None, small_edge_weight=0.2)
    off = segment_image(img, model, max_side=None, small_edge_weight=None)
    np.testing.assert_array_equal(same.to_ucm2(), off.to_ucm2())
    assert default.hierarchy.n_segments == off.hierarchy.n_segments  # same superpixels either way
