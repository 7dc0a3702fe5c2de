"""--gallery-file and the gallery options: YAML or JSON read through the published schema, command
line over file, the document round trip, clear errors naming the file and the place."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vhdtool import schemas
from vhdtool.checks.gallery import Declaration
from vhdtool.checks.gallery.document import KEYS, UPDATABLE, from_document
from vhdtool.cli import cli
from vhdtool.options import declaration_of

FULL = Declaration(
    security_type="TrustedLaunchSupported", disk_controllers=("SCSI", "NVMe"),
    accelerated_networking=True, publisher="myorg", offer="debian", sku="12", gallery="g1",
    definition="debian-12", version="1.0.0", end_of_life="2999-12-31", description="Debian 12",
    eula="MIT", privacy_statement_uri="https://example.org/privacy",
    release_note_uri="https://example.org/notes", tags=(("team", "images"),), vcpus=(2, 16),
    memory=(2048, None), disallowed_disk_types=("Standard_LRS",), plan_publisher="p",
    plan_name="n", plan_product="q", location="westeurope",
    target_regions=(("westeurope", 2), ("northeurope", None)), replica_count=1,
    storage_account_type="Standard_ZRS", exclude_from_latest=False, replication_mode="Full",
    sharing="direct", source="managed-image", publisher_uri="https://example.org",
    publisher_email="images@example.org", community_eula="https://example.org/eula",
    public_name_prefix="myorg")


def test_every_field_round_trips_through_the_document_and_the_schema(tmp_path: Path) -> None:
    doc = FULL.as_dict()
    assert list(doc) == list(KEYS) and all(v is not None for v in doc.values())
    assert Declaration(**from_document(doc)) == FULL
    f = tmp_path / "g.json"
    f.write_text(json.dumps(doc))
    assert declaration_of({"gallery_file": str(f)}, None) == FULL
    # every Declaration field has a key, every key says whether it is updatable
    assert set(UPDATABLE) == set(KEYS)
    assert set(schemas.load("gallery")["properties"]) == set(KEYS)
    assert doc["communityGalleryInfo"] == {"publisherUri": "https://example.org",
                                           "publisherContact": "images@example.org",
                                           "eula": "https://example.org/eula",
                                           "publicNamePrefix": "myorg"}


def test_community_information_options_over_the_file(tmp_path: Path) -> None:
    f = tmp_path / "g.yaml"
    f.write_text("sharing: community\ncommunityGalleryInfo: {publisherUri: https://a.example, "
                 "publicNamePrefix: pre}\n")
    d = declaration_of({"gallery_file": str(f), "publisher_uri": "https://b.example",
                        "publisher_email": "x@b.example", "community_eula": "https://b/eula"},
                       None)
    assert (d.publisher_uri, d.publisher_email, d.community_eula, d.public_name_prefix) == (
        "https://b.example", "x@b.example", "https://b/eula", "pre")


def test_the_manifest_declares_the_same_keys() -> None:
    declared = schemas.load("manifest")["properties"]["gallery"]["properties"]["declared"]
    assert set(declared["properties"]) == set(KEYS) | {"osState", "hyperVGeneration"}
    assert set(declared["required"]) == set(declared["properties"])


def test_yaml_file_with_a_bare_date_and_options_over_it(tmp_path: Path) -> None:
    f = tmp_path / "g.yaml"
    f.write_text("sku: '12'\nendOfLifeDate: 2999-12-31\nreplicationMode: Shallow\n"
                 "targetRegions: [{name: westeurope, regionalReplicaCount: 3}]\n")
    d = declaration_of({"gallery_file": str(f), "sku": "13",
                        "target_regions": ("northeurope=2", "westeurope")}, None)
    assert d.sku == "13" and d.end_of_life == "2999-12-31" and d.replication_mode == "Shallow"
    assert d.target_regions == (("northeurope", 2), ("westeurope", None))


@pytest.mark.parametrize("text, where", [
    ("bogus: 1\n", "'bogus' was unexpected"),
    ("replicaCount: two\n", ".replicaCount: 'two' is not of type"),
    ("replicationMode: Deep\n", ".replicationMode: 'Deep' is not one of"),
    ("targetRegions: [{count: 2}]\n", ".targetRegions"),
    ("a: [\n", "not YAML or JSON at line 2"),
])
def test_bad_files_are_usage_errors_naming_file_and_place(tmp_path: Path, text: str,
                                                          where: str) -> None:
    f = tmp_path / "g.yaml"
    f.write_text(text)
    with pytest.raises(click.BadParameter) as e:
        declaration_of({"gallery_file": str(f)}, None)
    assert str(f) in str(e.value) and where in str(e.value)


@pytest.mark.parametrize("opts, message", [
    ({"vcpus": "two-4"}, "'two' is not an integer"),
    ({"target_regions": ("westeurope=",)}, "is not REGION[=COUNT]"),
    ({"tags": ("novalue",)}, "is not KEY=VALUE"),
])
def test_bad_option_values_are_usage_errors(opts: dict, message: str) -> None:
    with pytest.raises(click.BadParameter, match=message.replace("[", r"\[")):
        declaration_of(opts, None)


def test_cli_exits_2_on_a_bad_gallery_file(tmp_path: Path) -> None:
    f = tmp_path / "g.json"
    f.write_text('{"sharing": "public"}')
    res = CliRunner().invoke(cli, ["check", "--no-guest", "--gallery-file", str(f),
                                   str(tmp_path / "none.vhd")])
    assert res.exit_code == 2 and "'public' is not one of" in res.output, res.output
    assert "Traceback" not in res.output
