import numpy as np
import pandas as pd
import pytest
import tifffile

from cytoscreen import io
from cytoscreen.errors import InputDataError


@pytest.mark.parametrize("raw,expected", [("A1", "A01"), ("a01", "A01"), ("A001", "A01"), ("P24", "P24"),
                                          (" h12 ", "H12"), ("AF48", "AF48")])
def test_normalize_well(raw, expected):
    assert io.normalize_well(raw) == expected


@pytest.mark.parametrize("raw", ["", "A", "1A", "A0", "A-1", "A1234"])
def test_normalize_well_rejects(raw):
    with pytest.raises(ValueError):
        io.normalize_well(raw)


def test_split_and_build_wells_roundtrip():
    for r in range(16):
        for c in range(1, 25):
            assert io.split_well(io.well_from_row_col(r, c)) == (r, c)
    assert io.well_from_row_col(15, 24) == "P24"
    assert io.row_index_to_letters(26) == "AA" and io.row_letters_to_index("AA") == 26


def test_feature_columns_are_everything_but_metadata_and_qc():
    df = pd.DataFrame(columns=["Metadata_Plate", "QC_blurry", "DNA_x_0000", "area", "Metadata_moa"])
    assert io.feature_columns(df) == ["DNA_x_0000", "area"]
    assert io.metadata_columns(df) == ["Metadata_Plate", "Metadata_moa"]
    assert io.qc_columns(df) == ["QC_blurry"]


def test_write_parquet_is_atomic_and_keeps_provenance(tmp_path):
    df = pd.DataFrame({"Metadata_Plate": ["P1"], "f": np.array([1.5], np.float32)})
    path = io.write_parquet(df, tmp_path / "out" / "t.parquet", provenance=io.provenance("test", plate="P1"))
    back = pd.read_parquet(path)
    assert back["f"].dtype == np.float32 and back["f"].iloc[0] == 1.5
    prov = io.read_provenance(path)
    assert prov["stage"] == "test" and prov["plate"] == "P1" and "cytoscreen_version" in prov
    assert [p.name for p in path.parent.iterdir()] == ["t.parquet"]


def test_outputs_get_umask_permissions_not_0600(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        io.write_text("x", tmp_path / "r.html")
    finally:
        os.umask(old)
    assert (tmp_path / "r.html").stat().st_mode & 0o777 == 0o644


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.parquet"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_read_image_tiff_pages_and_errors(tmp_path):
    stack = np.arange(3 * 8 * 8, dtype=np.uint16).reshape(3, 8, 8)
    tifffile.imwrite(tmp_path / "multi.tif", stack, photometric="rgb", planarconfig="separate")  # one page, 3 samples
    assert np.array_equal(io.read_image(tmp_path / "multi.tif", 2), stack[2])
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputDataError, match="bad.tif: cannot read image"):
        io.read_image(tmp_path / "bad.tif")
    with pytest.raises(InputDataError, match="expected a 2-D image"):
        io.read_image(tmp_path / "multi.tif")


def test_read_image_zarr_flat_index():
    from tests.conftest import DATA

    arr = DATA / "jump_rab30_mini" / "images.zarr" / "images"
    dna_site0 = io.read_image(arr, 0 * 5 + 1)
    assert dna_site0.shape == (384, 384) and dna_site0.dtype == np.uint16
    assert abs(dna_site0.mean() - 2140) < 5  # SOURCE.md: site 0 DNA mean 2140
    assert io.read_image(arr, 1 * 5 + 1).mean() < 300  # site 1 is about 10x dimmer


def test_write_json_replaces_nan(tmp_path):
    io.write_json({"a": float("nan"), "b": np.float32(2.0), "c": [1, np.int64(2)]}, tmp_path / "x.json")
    assert (tmp_path / "x.json").read_text().replace(" ", "").replace("\n", "") == '{"a":null,"b":2.0,"c":[1,2]}'


def test_image_full_scale_from_bit_depth_and_float_range():
    assert io.image_full_scale(np.zeros(4, np.uint8)) == 255
    assert io.image_full_scale(np.zeros(4, np.uint16)) == 65535
    assert io.image_full_scale(np.zeros(4, np.uint16), bit_depth=12) == 4095
    assert io.image_full_scale(np.array([0.2, 1.0], np.float32)) == 1.0
    assert io.image_full_scale(np.array([10.0, 3000.0], np.float32)) == 4095
    assert io.image_full_scale(np.array([10.0, 4095.0], np.float32)) == 4095
    assert io.image_full_scale(np.array([10.0, 40000.0], np.float32)) == 65535
    assert io.image_dtype_max(np.array([10.0, 3000.0], np.float32)) == 4095  # features' dtype scaling too


def test_read_image_header_without_decoding(tmp_path):
    tifffile.imwrite(tmp_path / "u8.tif", np.zeros((8, 9), np.uint8))
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((5, 8, 8), np.uint16), photometric="minisblack")
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((8, 8), np.float32))
    h = io.read_image_header(tmp_path / "u8.tif")
    assert (h.dtype, h.bit_depth, h.shape, h.planes) == ("uint8", 8, (8, 9), 1)
    h = io.read_image_header(tmp_path / "z.tif")
    assert (h.dtype, h.bit_depth, h.planes) == ("uint16", 16, 5)
    assert io.read_image_header(tmp_path / "f.tif").is_float
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputDataError, match="bad.tif: cannot read image header"):
        io.read_image_header(tmp_path / "bad.tif")


def test_read_image_z_max_frame_and_3d_hint(tmp_path):
    stack = np.random.default_rng(0).integers(0, 999, (4, 8, 8)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "z.tif", stack, photometric="minisblack")
    assert np.array_equal(io.read_image(tmp_path / "z.tif", io.z_max_frame()), stack.max(axis=0))
    with pytest.raises(InputDataError, match="a z-stack needs `ingest.z_projection: max`"):
        io.read_image(tmp_path / "z.tif")


def _frames():
    """Frames as the profiles steps write them, and others arrow_table must hand to from_pandas."""
    rng = np.random.default_rng(0)
    n = 50
    feats = rng.normal(size=(4, n)).astype(np.float32)  # column-major, as read_profiles builds it
    feats[1, [3, 7]] = np.nan
    df = pd.DataFrame(feats.T, columns=[f"f{j}" for j in range(4)], copy=False)
    df.insert(0, "Metadata_Plate", ["P1"] * n)
    df.insert(1, "Metadata_n", np.arange(n))
    df.insert(3, "Metadata_flag", rng.random(n) > 0.5)
    df["g64"] = np.where(np.arange(n) == 0, np.nan, rng.normal(size=n))  # a float64 block
    df["cat"] = pd.Categorical(["a", "b"] * (n // 2))
    yield df
    yield df.iloc[5:20]  # an index that does not start at 0
    yield df.iloc[:0]
    row_major = pd.DataFrame(rng.normal(size=(n, 3)), columns=list("abc"), copy=False)
    row_major.insert(0, "m", ["x"] * n)  # the float block stays a strided view of the rows
    yield row_major
    yield df[[c for c in df.columns if c.startswith("f")]]  # floats only
    named = df.copy()
    named.columns.name = "cols"
    yield named
    with_attrs = df.copy()
    with_attrs.attrs["note"] = "x"
    yield with_attrs
    yield df.astype({"f0": "Float32"})  # an extension dtype


@pytest.mark.parametrize("i", range(8))
def test_arrow_table_equals_from_pandas(i, tmp_path):
    import pyarrow as pa

    from cytoscreen.io.tables import _float_columns, arrow_table

    df = list(_frames())[i]
    # the column-major float32 block and the float64 column are wrapped; row-major floats, named
    # column indexes, attrs and extension dtypes are left to from_pandas
    assert len(_float_columns(df)) == [5, 5, 5, 0, 4, 0, 0, 4][i]
    ours, theirs = arrow_table(df), pa.Table.from_pandas(df, preserve_index=False)
    assert ours.equals(theirs, check_metadata=True)
    assert ours.schema.metadata == theirs.schema.metadata
    assert [c.null_count for c in ours.columns] == [c.null_count for c in theirs.columns]
    import pyarrow.parquet as pq

    from cytoscreen.io.tables import parquet_write_options

    io.write_parquet(df, tmp_path / "ours.parquet")
    pq.write_table(theirs, tmp_path / "theirs.parquet", **parquet_write_options(theirs.schema))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ours.parquet"),
                                  pd.read_parquet(tmp_path / "theirs.parquet"))
