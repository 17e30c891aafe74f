"""Write chromatogram-only indexed mzML files the way msconvert writes triple-quad SRM data.

The layout follows what ProteoWizard's msconvert produces for a SCIEX triple quad: an
`indexedmzML` wrapper, a TIC first (MS:1000235), then one SRM chromatogram (MS:1001473) per
transition with ids like `- SRM SIC Q1=563.3 Q3=463.2 sample=1 period=1 experiment=1
transition=0`, time in minutes as 64-bit floats, intensities as 32-bit floats, an `<indexList>`
of chromatogram byte offsets, `<indexListOffset>` and a SHA-1 `<fileChecksum>` over every byte
up to and including the `<fileChecksum>` tag.

The whole file is assembled in memory and written atomically (temporary file in the target
directory, then `os.replace`). No clock is read, so equal input gives byte-identical output.
"""

from __future__ import annotations

import base64
import gzip as gzip_module
import hashlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from lcmsquant.files import atomic_write

__all__ = ["Chromatogram", "srm_native_id", "write_chromatogram_mzml"]

# psi-ms.obo / unit.obo versions written in <cvList> (the ones pyopenms 3.6 ships).
_MS_CV_VERSION = "4.2.2"
_UO_CV_VERSION = "12:10:2011"
_SOFTWARE_ID = "lcmsquant_simulate"


@dataclass(frozen=True, eq=False)
class Chromatogram:
    """One chromatogram: an SRM trace (q1 and q3 set) or a TIC (q1 = q3 = None)."""

    native_id: str
    q1: float | None
    q3: float | None
    time_min: np.ndarray  # float64, minutes
    intensity: np.ndarray  # float32, detector counts
    collision_energy: float = 0.0  # eV; msconvert writes 0.0 when the vendor file has none
    polarity: str | None = "positive"  # "positive", "negative" or None (not written)

    @property
    def is_tic(self) -> bool:
        """Whether this is a total ion current chromatogram rather than an SRM trace."""
        return self.q1 is None and self.q3 is None


def srm_native_id(
    q1: float, q3: float, transition: int, *, sample: int = 1, period: int = 1, experiment: int = 1
) -> str:
    """The chromatogram id msconvert gives a SCIEX SRM transition (m/z formatted with `:g`)."""
    return (
        f"- SRM SIC Q1={q1:g} Q3={q3:g} sample={sample} period={period} experiment={experiment} transition={transition}"
    )


def write_chromatogram_mzml(
    path: Path | str,
    chromatograms: Iterable[Chromatogram],
    *,
    compress: bool = True,
    run_id: str | None = None,
    gzip: bool = False,
    start_timestamp: str | None = None,
) -> Path:
    """Write `chromatograms` (TIC first, by convention) as an indexed mzML file; return the path.

    compress: zlib-compress the binary arrays (MS:1000574), else MS:1000576 no compression.
    run_id: the run's id (default: the file name without .mzML/.mzML.gz); it is made a valid
        xs:ID the way msconvert does it (`_x0030_01_...` for a leading digit).
    gzip: gzip the whole file (mtime 0, so the output stays deterministic); the index offsets
        refer to the uncompressed bytes, as with msconvert's --gzip.
    start_timestamp: optional xs:dateTime for `<run startTimeStamp=...>` (never read from a clock).
    """
    path = Path(path)
    chroms = list(chromatograms)
    if run_id is None:
        run_id = _strip_suffix(path.name)
    data = build_chromatogram_mzml(chroms, compress=compress, run_id=run_id, start_timestamp=start_timestamp)
    if gzip:
        data = gzip_module.compress(data, compresslevel=6, mtime=0)
    atomic_write(path, data)
    return path


def build_chromatogram_mzml(
    chromatograms: list[Chromatogram],
    *,
    compress: bool = True,
    run_id: str = "run",
    start_timestamp: str | None = None,
) -> bytes:
    """The bytes of an indexed mzML file holding `chromatograms` (see write_chromatogram_mzml)."""
    ids = [c.native_id for c in chromatograms]
    if len(set(ids)) != len(ids):
        raise ValueError("chromatogram native ids must be unique within a file")

    parts: list[bytes] = []
    size = 0

    def emit(text: str) -> None:
        nonlocal size
        b = text.encode("utf-8")
        parts.append(b)
        size += len(b)

    emit(_header(chromatograms, run_id, start_timestamp))
    offsets: list[tuple[str, int]] = []
    for index, chrom in enumerate(chromatograms):
        indent = "        "
        emit(indent)
        offsets.append((chrom.native_id, size))  # points at '<chromatogram'
        emit(_chromatogram_xml(index, chrom, compress))
    emit("      </chromatogramList>\n    </run>\n  </mzML>\n  ")
    index_list_offset = size  # points at '<indexList', like msconvert
    # msconvert also writes an empty <index name="spectrum">, which mzML1.1.2_idx.xsd does not
    # allow (an index needs at least one offset); only the chromatogram index is written here.
    lines = ['<indexList count="1">\n', '    <index name="chromatogram">\n']
    for native_id, offset in offsets:
        lines.append(f'      <offset idRef="{_attr(native_id)}">{offset}</offset>\n')
    lines += ["    </index>\n", "  </indexList>\n", f"  <indexListOffset>{index_list_offset}</indexListOffset>\n"]
    emit("".join(lines))
    emit("  <fileChecksum>")
    sha1 = hashlib.sha1()
    for b in parts:
        sha1.update(b)
    emit(f"{sha1.hexdigest()}</fileChecksum>\n</indexedmzML>\n")
    return b"".join(parts)


# ---------------------------------------------------------------------------------------------


def _header(chromatograms: list[Chromatogram], run_id: str, start_timestamp: str | None) -> str:
    timestamp = f' startTimeStamp="{_attr(start_timestamp)}"' if start_timestamp else ""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<indexedmzML xmlns="http://psi.hupo.org/ms/mzml" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://psi.hupo.org/ms/mzml '
        'http://psidev.info/files/ms/mzML/xsd/mzML1.1.2_idx.xsd">\n'
        '  <mzML xmlns="http://psi.hupo.org/ms/mzml" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://psi.hupo.org/ms/mzml '
        'http://psidev.info/files/ms/mzML/xsd/mzML1.1.0.xsd" '
        f'id="{_attr(run_id)}" version="1.1.0">\n'
        '    <cvList count="2">\n'
        '      <cv id="MS" fullName="Proteomics Standards Initiative Mass Spectrometry Ontology" '
        f'version="{_MS_CV_VERSION}" '
        'URI="https://raw.githubusercontent.com/HUPO-PSI/psi-ms-CV/master/psi-ms.obo"/>\n'
        '      <cv id="UO" fullName="Unit Ontology" '
        f'version="{_UO_CV_VERSION}" '
        'URI="http://ontologies.berkeleybop.org/uo.obo"/>\n'
        "    </cvList>\n"
        "    <fileDescription>\n"
        "      <fileContent>\n"
        '        <cvParam cvRef="MS" accession="MS:1001473" '
        'name="selected reaction monitoring chromatogram" value=""/>\n'
        "      </fileContent>\n"
        "    </fileDescription>\n"
        '    <softwareList count="1">\n'
        f'      <software id="{_SOFTWARE_ID}" version="1">\n'
        '        <cvParam cvRef="MS" accession="MS:1000799" name="custom unreleased software tool" '
        'value="lcmsquant.simulate (synthetic triple-quad data)"/>\n'
        "      </software>\n"
        "    </softwareList>\n"
        '    <instrumentConfigurationList count="1">\n'
        '      <instrumentConfiguration id="IC1">\n'
        '        <cvParam cvRef="MS" accession="MS:1002593" name="Triple Quad 5500" value=""/>\n'
        '        <componentList count="4">\n'
        '          <source order="1">\n'
        '            <cvParam cvRef="MS" accession="MS:1000073" name="electrospray ionization" value=""/>\n'
        "          </source>\n"
        '          <analyzer order="2">\n'
        '            <cvParam cvRef="MS" accession="MS:1000081" name="quadrupole" value=""/>\n'
        "          </analyzer>\n"
        '          <analyzer order="3">\n'
        '            <cvParam cvRef="MS" accession="MS:1000081" name="quadrupole" value=""/>\n'
        "          </analyzer>\n"
        '          <detector order="4">\n'
        '            <cvParam cvRef="MS" accession="MS:1000253" name="electron multiplier" value=""/>\n'
        "          </detector>\n"
        "        </componentList>\n"
        f'        <softwareRef ref="{_SOFTWARE_ID}"/>\n'
        "      </instrumentConfiguration>\n"
        "    </instrumentConfigurationList>\n"
        '    <dataProcessingList count="1">\n'
        '      <dataProcessing id="lcmsquant_simulate_conversion">\n'
        f'        <processingMethod order="0" softwareRef="{_SOFTWARE_ID}">\n'
        '          <cvParam cvRef="MS" accession="MS:1000544" name="Conversion to mzML" value=""/>\n'
        "        </processingMethod>\n"
        "      </dataProcessing>\n"
        "    </dataProcessingList>\n"
        f'    <run id="{_attr(_xs_id(run_id))}" defaultInstrumentConfigurationRef="IC1"{timestamp}>\n'
        f'      <chromatogramList count="{len(chromatograms)}" '
        'defaultDataProcessingRef="lcmsquant_simulate_conversion">\n'
    )


def _chromatogram_xml(index: int, chrom: Chromatogram, compress: bool) -> str:
    time = np.ascontiguousarray(chrom.time_min, dtype="<f8")
    intensity = np.ascontiguousarray(chrom.intensity, dtype="<f4")
    if time.ndim != 1 or time.shape != intensity.shape:
        raise ValueError(f"chromatogram {chrom.native_id!r}: time and intensity must be 1-D of equal length")
    if (chrom.q1 is None) != (chrom.q3 is None):
        raise ValueError(f"chromatogram {chrom.native_id!r}: give both q1 and q3, or neither (TIC)")
    out = [f'<chromatogram index="{index}" id="{_attr(chrom.native_id)}" defaultArrayLength="{len(time)}">\n']
    p = "          "
    if chrom.is_tic:
        out.append(f'{p}<cvParam cvRef="MS" accession="MS:1000235" name="total ion current chromatogram" value=""/>\n')
    else:
        out.append(
            f'{p}<cvParam cvRef="MS" accession="MS:1001473" name="selected reaction monitoring chromatogram" value=""/>\n'
        )
        if chrom.polarity == "positive":
            out.append(f'{p}<cvParam cvRef="MS" accession="MS:1000130" name="positive scan" value=""/>\n')
        elif chrom.polarity == "negative":
            out.append(f'{p}<cvParam cvRef="MS" accession="MS:1000129" name="negative scan" value=""/>\n')
        out.append(
            f"{p}<precursor>\n"
            f"{p}  <isolationWindow>\n"
            f'{p}    <cvParam cvRef="MS" accession="MS:1000827" name="isolation window target m/z" '
            f'value="{_num(chrom.q1)}" unitCvRef="MS" unitAccession="MS:1000040" unitName="m/z"/>\n'
            f"{p}  </isolationWindow>\n"
            f"{p}  <activation>\n"
            f'{p}    <cvParam cvRef="MS" accession="MS:1000133" name="collision-induced dissociation" value=""/>\n'
            f'{p}    <cvParam cvRef="MS" accession="MS:1000045" name="collision energy" '
            f'value="{_num(chrom.collision_energy)}" unitCvRef="UO" unitAccession="UO:0000266" unitName="electronvolt"/>\n'
            f"{p}  </activation>\n"
            f"{p}</precursor>\n"
            f"{p}<product>\n"
            f"{p}  <isolationWindow>\n"
            f'{p}    <cvParam cvRef="MS" accession="MS:1000827" name="isolation window target m/z" '
            f'value="{_num(chrom.q3)}" unitCvRef="MS" unitAccession="MS:1000040" unitName="m/z"/>\n'
            f"{p}  </isolationWindow>\n"
            f"{p}</product>\n"
        )
    compression = (
        '<cvParam cvRef="MS" accession="MS:1000574" name="zlib compression" value=""/>'
        if compress
        else '<cvParam cvRef="MS" accession="MS:1000576" name="no compression" value=""/>'
    )
    time_b64 = _encode(time, compress)
    intensity_b64 = _encode(intensity, compress)
    out.append(
        f'{p}<binaryDataArrayList count="2">\n'
        f'{p}  <binaryDataArray encodedLength="{len(time_b64)}">\n'
        f'{p}    <cvParam cvRef="MS" accession="MS:1000523" name="64-bit float" value=""/>\n'
        f"{p}    {compression}\n"
        f'{p}    <cvParam cvRef="MS" accession="MS:1000595" name="time array" value="" '
        'unitCvRef="UO" unitAccession="UO:0000031" unitName="minute"/>\n'
        f"{p}    <binary>{time_b64}</binary>\n"
        f"{p}  </binaryDataArray>\n"
        f'{p}  <binaryDataArray encodedLength="{len(intensity_b64)}">\n'
        f'{p}    <cvParam cvRef="MS" accession="MS:1000521" name="32-bit float" value=""/>\n'
        f"{p}    {compression}\n"
        f'{p}    <cvParam cvRef="MS" accession="MS:1000515" name="intensity array" value="" '
        'unitCvRef="MS" unitAccession="MS:1000131" unitName="number of detector counts"/>\n'
        f"{p}    <binary>{intensity_b64}</binary>\n"
        f"{p}  </binaryDataArray>\n"
        f"{p}</binaryDataArrayList>\n"
        "        </chromatogram>\n"
    )
    return "".join(out)


def _encode(array: np.ndarray, compress: bool) -> str:
    raw = array.tobytes()
    if compress:
        raw = zlib.compress(raw, 6)
    return base64.b64encode(raw).decode("ascii")


def _num(value: float | None) -> str:
    """A float the way msconvert writes it: shortest round-trip repr, at least one decimal."""
    return repr(float(value if value is not None else 0.0))


def _attr(text: str) -> str:
    return escape(str(text), {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})


def _xs_id(text: str) -> str:
    """An xs:ID (NCName) from any string, escaping like ProteoWizard (`_x0031_` for '1')."""
    out = []
    for i, ch in enumerate(text):
        ok = ch.isalpha() or ch == "_" or (i > 0 and (ch.isdigit() or ch in ".-"))
        out.append(ch if ok and ch.isascii() else f"_x{ord(ch):04X}_")
    return "".join(out) or "_"


def _strip_suffix(name: str) -> str:
    for suffix in (".mzML.gz", ".mzml.gz", ".mzML", ".mzml"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
