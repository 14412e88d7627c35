"""The Azure facts catalogue: sizes, images, prices."""

from __future__ import annotations

import pytest

from snakemake_executor_saje import catalogue
from snakemake_executor_saje.catalogue import VmSize


def test_lookup_is_case_insensitive_and_returns_canonical_name():
    size = catalogue.vm_size("standard_hb120RS_v3")
    assert size == VmSize(
        name="Standard_HB120rs_v3",
        vcpus=120,
        memory_gib=448.0,
        gpus=0,
        rdma=True,
        family="standardHBv3Family",
        infiniband="HDR-200",
    )


def test_unknown_and_empty_names_give_none():
    assert catalogue.vm_size("Standard_Nope_v9") is None
    assert catalogue.vm_size("") is None
    assert catalogue.hourly_price("Standard_Nope_v9") is None


@pytest.mark.parametrize(
    "name, vcpus, memory, gpus",
    [
        ("Standard_D2s_v5", 2, 8, 0),
        ("Standard_D16s_v5", 16, 64, 0),
        ("Standard_D2as_v5", 2, 8, 0),
        ("Standard_F16s_v2", 16, 32, 0),
        ("Standard_A1_v2", 1, 2, 0),
        ("Standard_E4s_v5", 4, 32, 0),
    ],
)
def test_htc_sizes(name, vcpus, memory, gpus):
    size = catalogue.vm_size(name)
    assert (size.vcpus, size.memory_gib, size.gpus, size.rdma) == (vcpus, memory, gpus, False)
    assert size.infiniband is None


@pytest.mark.parametrize(
    "name, vcpus, memory",
    [
        ("Standard_HB368rs_v5", 368, 432),
        ("Standard_HB368-48rs_v5", 48, 432),
        ("Standard_HB176rs_v4", 176, 768),
        ("Standard_HB176-144rs_v4", 144, 768),
        ("Standard_HB176-96rs_v4", 96, 768),
        ("Standard_HB176-48rs_v4", 48, 768),
        ("Standard_HB176-24rs_v4", 24, 768),
        ("Standard_HB120rs_v3", 120, 448),
        ("Standard_HB120-96rs_v3", 96, 448),
        ("Standard_HB120-64rs_v3", 64, 448),
        ("Standard_HB120-32rs_v3", 32, 448),
        ("Standard_HB120-16rs_v3", 16, 448),
        ("Standard_HX176rs", 176, 1408),
        ("Standard_HX176-24rs", 24, 1408),
        ("Standard_HC44rs", 44, 352),
        ("Standard_HC44-16rs", 16, 352),
        ("Standard_HC44-32rs", 32, 352),
        ("Standard_HB60rs", 60, 228),
    ],
)
def test_hpc_sizes_are_rdma_with_constrained_core_counts(name, vcpus, memory):
    size = catalogue.vm_size(name)
    assert size.rdma and size.infiniband
    assert (size.vcpus, size.memory_gib, size.gpus) == (vcpus, memory, 0)


@pytest.mark.parametrize(
    "name, memory",
    [
        ("Standard_ND96asr_v4", 900),
        ("Standard_ND96amsr_A100_v4", 1900),
        ("Standard_ND96isr_H100_v5", 1900),
    ],
)
def test_gpu_rdma_sizes(name, memory):
    size = catalogue.vm_size(name)
    assert (size.vcpus, size.gpus, size.memory_gib, size.rdma) == (96, 8, memory, True)


def test_rdma_filter_and_no_duplicate_names():
    names = [s.name.lower() for s in catalogue.vm_sizes()]
    assert len(names) == len(set(names))
    assert all(s.rdma for s in catalogue.vm_sizes(rdma=True))
    assert not any(s.rdma for s in catalogue.vm_sizes(rdma=False))
    assert catalogue.vm_size("Standard_HB120rs_v3") in catalogue.vm_sizes(rdma=True)


def test_supported_images_have_the_rest_shape():
    images = catalogue.supported_images()
    assert images
    for image in images:
        assert set(image) <= {
            "nodeAgentSKUId",
            "imageReference",
            "osType",
            "capabilities",
            "verificationType",
            "batchSupportEndOfLife",
        }
        assert {"publisher", "offer", "sku", "version"} <= set(image["imageReference"])
        assert image["osType"] in ("linux", "windows")
        assert image["verificationType"] in ("verified", "unverified")


def test_supported_images_is_a_copy():
    catalogue.supported_images()[0]["nodeAgentSKUId"] = "mutated"
    assert catalogue.supported_images()[0]["nodeAgentSKUId"] != "mutated"


@pytest.mark.parametrize(
    "publisher, offer, sku, agent",
    [
        ("microsoft-dsvm", "ubuntu-hpc", "2404", "batch.node.ubuntu 24.04"),
        ("microsoft-dsvm", "ubuntu-hpc", "2204", "batch.node.ubuntu 22.04"),
        ("almalinux", "almalinux-hpc", "8-hpc-gen2", "batch.node.el 8"),
        ("Canonical", "ubuntu-24_04-lts", "server", "batch.node.ubuntu 24.04"),
        ("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts", "batch.node.ubuntu 22.04"),
        ("microsoft-azure-batch", "ubuntu-server-container", "20-04-lts", "batch.node.ubuntu 20.04"),
    ],
)
def test_node_agent_for_images(publisher, offer, sku, agent):
    assert catalogue.node_agent_for(publisher, offer, sku) == agent
    assert catalogue.find_image(publisher, offer, sku)["nodeAgentSKUId"] == agent


def test_unknown_image():
    assert catalogue.node_agent_for("x", "y", "z") is None
    assert catalogue.find_image(None, "y", "z") is None


def test_prices():
    assert catalogue.hourly_price("Standard_D2s_v5") == pytest.approx(0.096)
    assert catalogue.hourly_price("standard_hb120-16rs_v3") == catalogue.hourly_price(
        "Standard_HB120rs_v3"
    )
    # Spot prices move hourly and are not tabulated.
    assert catalogue.hourly_price("Standard_D2s_v5", spot=True) is None
    info = catalogue.price_info()
    assert info["region"] == "eastus" and info["currency"] == "USD" and info["date"]


def test_every_size_has_a_price_or_an_explicit_null():
    for size in catalogue.vm_sizes():
        price = catalogue.hourly_price(size.name)
        assert price is None or price > 0
