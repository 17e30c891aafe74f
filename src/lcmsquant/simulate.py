"""Simulate a triple-quadrupole LC-MS/MS bioanalytical batch (worklist + one mzML per injection).

The simulator is used by the tests, the shipped example and the benchmarks. It writes

    out_dir/worklist.csv              one row per injection, in injection order
    out_dir/NNN_<sample_id>.mzML      one indexed mzML per injection (TIC + scheduled SRM traces)
    out_dir/../<out_dir.name>_truth.csv   what was really in every sample (never read by the
                                          pipeline; beside the folder so it is not mistaken for input)

Run layout (typical bioanalytical run): double blank, zero, CAL1..CALn ascending, carry-over
blank, QC set 1 (LLOQ, LQC, MQC, HQC), first half of the unknowns, QC set 2 (LQC, MQC, HQC) and
two DQCs (dilution factor 10), second half of the unknowns, QC set 3 (LLOQ, LQC, MQC, HQC),
final blank. Among the unknowns, for every analyte: two samples below the LLOQ (0.3-0.7 x LLOQ),
one pre-dose sample (truth 0), one sample above the ULOQ injected undiluted (1.5-3 x ULOQ) and
one sample at 2-8 x ULOQ injected with dilution factor 10; the others are log-uniform between
1.5 x LLOQ and 0.9 x ULOQ, independently per analyte.

Physics (areas in counts x seconds, i.e. cps x s; heights and intensities in counts per second):
- peaks are exponentially modified Gaussians whose apex sits at the simulated RT and whose area
  is exactly the simulated area; each compound has its own shape through a batch (sigma 1.0-1.9
  s, tau 1.2-3.5 s: FWHM 3.0-6.6 s, the width at 10 % 1.1-3.1 x longer after the apex than
  before it, as on the real files), varied by 4 % (lognormal) from injection to injection;
- RT = method RT + rt_offset_min (option, 0 by default) + a batch drift (linear in injection
  order, +0.04 min at the end) + a per-injection jitter (SD 0.005 min), the same shift for every
  compound of an injection, so an analyte and its IS co-elute exactly as the method says;
- scheduled SRM: each trace covers [RT_expected - w, RT_expected + w] min with w = 0.5 +
  |rt_offset_min| (the window stays centred on the method RT, widened as a lab would to keep
  the peak); acquisition below;
- analyte area = k * V * c * (1 - 0.03 c / ULOQ) * ME * S * ratio_noise, IS area = k_IS * ME * S,
  with ME the per-injection matrix effect (lognormal, sigma 0.15, the same for an analyte and
  its IS; mean 0.85 in bone marrow, 1 elsewhere), S a slow sensitivity loss over the batch
  (-5 % at the end, tracked by the IS) and ratio_noise lognormal sigma 0.02;
  qualifier area = quantifier area x ion ratio (flumatinib 0.45, M1 0.30, M3 0.60) x lognormal
  sigma 0.03;
- k is chosen from a target LLOQ peak height at the nominal shape (sigma 1.8 s, tau 1.75 s):
  flumatinib 1350, M1 900, M3 920 cps at the plasma LLOQ, i.e. 12-80 x (median ~30 x) the
  baseline noise SD of the instrument acquisition (17-77 cps; smooth acquisition: 20-30 x its
  nominal 45 cps); the IS heights are ~110 000 (flumatinib-d3) and ~90 000 (M3-d4) cps, 50-200 x
  the LLOQ heights;
- V is an "injection volume" factor of the batch matrix: plasma 1, CSF 5.8 (CSF is injected
  without the protein-precipitation dilution of plasma). With it the CSF LLOQ (0.1 ng/mL) is
  0.6-1.2 x the plasma LLOQ heights for all three analytes (a shared k with V = 1 would leave
  flumatinib's CSF LLOQ at a tenth of its plasma LLOQ), while k stays one property of each
  analyte. The CSF IS working solution is weaker by the same factor, so IS responses match plasma;
- detector saturation at 5e6 cps (flat top); ULOQ peaks stay around 1e6 cps;
- carry-over: every injection receives carryover_fraction x the previous injection's analyte
  amount (analytes only, not the IS);
- interferences: with probability 4 % per SRM trace a small extra peak (1 % to 2 x the LLOQ
  height, log-uniform) 0.25-0.45 min from the (offset) method RT; in about 1 of 30 unknowns (at
  least one per batch) a co-eluting interference raises one analyte's qualifier area by
  50-100 %; only these co-eluting ones are recorded in the truth file (`interference` column),
  the off-RT peaks never overlap the true peak;
- blanks hold no analyte and no IS (baseline, noise, carry-over); the zero holds the IS only.

Acquisition "instrument" (`lcmsquant simulate`'s default and the benchmarks'), as measured on the
real SCIEX QTRAP 5500 files of ../shared/data/smartpeak-sciex-srm by
benchmarks/trace_statistics.py, which prints the real and simulated statistics side by side:
- sampling: the scheduled-SRM cycle time, the interval between a trace's points, changes along
  the run as windows open and close: drawn per batch log-uniform in 0.4-1.0 s every 0.6 min,
  linear in between, the same in every injection; each transition is read at its own fixed
  place in the cycle (real files: 0.6 s median, 0.4-1 s, the longest interval of a trace 1.7 x
  its shortest);
- counting: each point counts ions for one dwell time (40-80 ms per transition and batch: the
  method's 8 transitions get long dwells, as a targeted assay would; the real 300-transition
  panel uses 8-17 ms), with a variance 1.6 x the count (a share of double pulses; the fit of
  benchmarks/trace_statistics.py reads 1.45 here and 1.42-1.48 on the real traces), and is
  written as counts / dwell in whole cps, so intensities sit on steps of 1 / dwell (12.5-25
  cps) and a low baseline holds zeros;
- jagged tops: before counting, the ion current scatters from point to point by a lognormal
  factor of 3.5-8 % (per batch; the real tops: 5-10 %), independently from point to point (as
  on the real traces: their residual lag-1 correlation is that of white noise); at high signal
  this, not counting, makes a single peak show several local maxima above half height;
- spikes: 0.15 % of points get a burst of 10-300 counts (log-uniform; the real files: about one
  trace in ten holds one); dropouts: 0.3 % of points read 0 (the real files: 0.4-0.5 % of points
  amid a signal);
- baseline: a chemical background per transition of 15-150 cps (log-uniform per batch, x
  lognormal 0.15 per injection) with a linear drift up to +/-30 % across the trace, counted like
  the signal (the real metabolite panel's backgrounds are higher, median ~250 cps: a drug
  assay's transitions are chosen to be quiet).
Acquisition "smooth" (SimulationOptions' default for now: see DEFAULT_ACQUISITION) is the
simulator before issue 13, byte for byte: one point per fixed 0.35 s cycle from a random phase,
peak shapes drawn per injection (sigma 1.6-2.0 s, tau 1.0-2.5 s), a baseline of 50-300 cps with
the same drift, white noise of SD 30-60 cps and 0.8 sqrt(signal), not quantised: smooth tops,
kept for comparison and for the tests written against it.

Situations (SimulationOptions, all off by default; their parameters are drawn whether used or
not, from streams of their own, so turning one on changes nothing else):
- matrix_peak: a plasma component eluting 0.30-0.40 min after each analyte (delay per batch and
  analyte), baseline-resolved, never co-eluting, in every sample of the batch including blanks
  and the zero; its height on the quantifier is log-uniform between the analyte's height at
  sqrt(LLOQ x ULOQ) and at 0.4 x ULOQ (comparable to mid-range analyte peaks), x lognormal 0.25
  from sample to sample; its qualifier is 0.2-1.0 x its quantifier; its own shape;
- neighbour_peak: an isomer of each analyte, present in proportion to it (0.6-1.0 x its height,
  on the qualifiers at 0.8-1.25 x that ratio), with the analyte's shape, 1.25-1.5 FWHM before or
  after it (per batch and analyte): partly resolved, a valley of at least 16 % of the lower
  apex between the two (noiseless, on the quantifier);
- rt_offset_min: the whole run elutes that many minutes from the method's RTs (up to +-1 min;
  the real transition list is up to ~0.5 min off the real runs); windows widened as above.

`simulate_study` writes a small study instead: paired trough draws (serum or plasma, bone marrow,
CSF) of a few subjects analysed in a plasma/marrow run, a CSF run and a reanalysis run, with the
last-dose and sampling date-times in the worklists and the true ratios in study_truth.csv.

Determinism: every random draw comes from numpy Generators seeded by `seed` (one stream for the
design, one for the batch (drift and acquisition), one per injection and, with the instrument
acquisition, one per trace; the situations have their own), so an option that changes one
injection or one trace leaves the noise of the others as it was; the counts of a point are
drawn by inverting their distribution at a fixed uniform draw, so a changed signal keeps its
noise pattern. No clock is read. The same seed and options give byte-identical files.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from scipy.stats import exponnorm

from lcmsquant.batch import COLUMNS
from lcmsquant.files import atomic_write
from lcmsquant.method import CALIBRATOR_LEVEL, CalibratorSet, Method, Transition, default_method_path, load_method
from lcmsquant.mzml_writer import Chromatogram, srm_native_id, write_chromatogram_mzml
from lcmsquant.vocabulary import Matrix

__all__ = [
    "SimulationOptions",
    "simulate_batch",
    "WORKLIST_COLUMNS",
    "TRUTH_COLUMNS",
    "truth_path_for",
    "simulate_study",
    "SimulatedStudy",
]

WORKLIST_COLUMNS = COLUMNS  # the worklist the simulator writes is one a lab would
TRUTH_COLUMNS = (
    "sample_id",
    "sample_type",
    "level",
    "matrix",
    "analyte",
    "true_concentration",
    "dilution_factor",
    "interference",
)
BATCH_MATRICES = (Matrix.PLASMA, Matrix.CSF)

# --- acquisition (as measured on the real SCIEX QTRAP 5500 files: benchmarks/trace_statistics.py) -
CYCLE_RANGE_S = (0.4, 1.0)  # scheduled-SRM cycle time = sampling interval, drawn per batch ...
CYCLE_KNOT_MIN = 0.6  # ... every 0.6 min of the run (log-uniform), linear in between
DWELL_RANGE_S = (0.040, 0.080)  # per transition and batch; 1 count = 1 / dwell cps (12.5-25 cps)
COUNT_DISPERSION = 1.6  # variance / mean of the counts (1 = Poisson); see acquire()
TOP_SCATTER_RANGE = (0.035, 0.08)  # multiplicative point-to-point scatter of the ion current, per batch
SPIKE_PROBABILITY = 1.5e-3  # per point: a burst of counts on one point ...
SPIKE_COUNTS = (10.0, 300.0)  # ... of this many counts (log-uniform)
DROPOUT_PROBABILITY = 3e-3  # per point: the point reads 0
BACKGROUND_CPS = (15.0, 150.0)  # chemical background per transition and batch (log-uniform)
SMOOTH_CYCLE_S = 0.35  # acquisition "smooth": a fixed cycle, white noise (the simulator before issue 13)
SMOOTH_SIGMA_S, SMOOTH_TAU_S = (1.6, 2.0), (1.0, 2.5)  # ... and its peak shapes, drawn per injection
WINDOW_HALF_MIN = 0.5  # each transition is acquired within expected RT +/- this
RUN_START = datetime(2024, 5, 6, 8, 0, 0)  # fixed, fictitious; injections every 6 min
INJECTION_INTERVAL = timedelta(minutes=6)

# --- response -------------------------------------------------------------------------------
SATURATION = 5.0e6  # cps, detector limit (flat tops above)
NOMINAL_SIGMA_S, NOMINAL_TAU_S = 1.8, 1.75  # the peak shape the k's are computed for
LLOQ_HEIGHT = {"flumatinib": 1350.0, "M1": 900.0, "M3": 920.0}  # cps at the plasma LLOQ
DEFAULT_LLOQ_HEIGHT = 1125.0  # cps, for analytes of other methods
IS_HEIGHT = {"flumatinib-d3": 110_000.0, "M3-d4": 90_000.0}
DEFAULT_IS_HEIGHT = 100_000.0
INJECTION_VOLUME = {"plasma": 1.0, "csf": 5.8}
ION_RATIO = {"flumatinib": 0.45, "M1": 0.30, "M3": 0.60}
DEFAULT_ION_RATIO = 0.40
MATRIX_EFFECT_MEAN = {"plasma": 1.0, "serum": 1.0, "marrow": 0.85, "csf": 1.0}
MATRIX_EFFECT_SIGMA = 0.15
RATIO_NOISE_SIGMA = 0.02
ION_RATIO_NOISE_SIGMA = 0.03
COMPRESSION_AT_ULOQ = 0.03
SENSITIVITY_LOSS = 0.05  # fraction lost by the end of the batch
RT_DRIFT_END_MIN = 0.04
RT_JITTER_MIN = 0.005
INTERFERENCE_PROBABILITY = 0.04
PEAK_SIGMA_S = (1.0, 1.9)  # EMG sigma and tau per compound and batch: FWHM 3.0-6.6 s, and ...
PEAK_TAU_S = (1.2, 3.5)  # ... the width at 10 % 1.1-3.1 x longer after the apex than before it
SHAPE_JITTER = 0.04  # per injection (lognormal sigma)
BACKGROUND_SIGMA = 0.15  # the background of a transition from injection to injection (lognormal)
MATRIX_PEAK_DELAY_MIN = (0.30, 0.40)  # option matrix_peak: after the analyte's apex
MATRIX_PEAK_TOP = 0.4  # its height: between the analyte's at sqrt(LLOQ x ULOQ) and at this x ULOQ
MATRIX_PEAK_SIGMA = 0.25  # from sample to sample (lognormal)
MATRIX_PEAK_QUALIFIER_RATIO = (0.2, 1.0)  # its qualifier / quantifier height
NEIGHBOUR_FWHM = (1.25, 1.5)  # option neighbour_peak: apex distance in FWHM of the analyte ...
NEIGHBOUR_HEIGHT = (0.6, 1.0)  # ... and height / the analyte's: a valley at least 16 % deep (noiseless)
SPOIL_FACTOR = 1.5
IS_DROPOUT_FACTOR = 0.20
MAX_RT_OFFSET_MIN = 1.0
ACQUISITIONS = ("instrument", "smooth")
# The library default stays "smooth" until the peak finder copes with real-looking traces: with
# "instrument" as the default, 32 tests of pipeline, acceptance, cohort, report and validation
# failed on the finder of 62352d8 (SPLIT/SHOULDER on jagged tops) and 20 still fail on that of
# c9a3b17 (a single point reading 0 on a top, as 0.4-0.5 % of the real points do, splits the
# peak; LLOQ QCs 20-30 % CV). `lcmsquant simulate` and the benchmarks use "instrument". Flip
# this when the finder handles them, and see what fails.
DEFAULT_ACQUISITION = "smooth"

# --- samples --------------------------------------------------------------------------------
MATRIX_SUFFIX = {"plasma": "PL", "serum": "SER", "marrow": "BM", "csf": "CSF"}
QC_SET_1 = ("LLOQ", "LQC", "MQC", "HQC")
QC_SET_2 = ("LQC", "MQC", "HQC", "DQC", "DQC")
QC_SET_3 = ("LLOQ", "LQC", "MQC", "HQC")
DILUTION = 10
MIN_UNKNOWNS = 6


class _FrozenMapping(Mapping):
    """A read-only, hashable mapping, so SimulationOptions stays frozen and hashable."""

    def __init__(self, data: Mapping | None = None):
        self._data = dict(data or {})

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return repr(self._data)


@dataclass(frozen=True)
class SimulationOptions:
    """What to simulate besides a clean run (defaults: a normal, passing batch)."""

    n_unknowns: int = 24
    compress: bool = True  # zlib-compress binary arrays
    gzip: bool = False  # write .mzML.gz instead of .mzML
    # analyte -> bias in % applied to the QC true concentrations (to make QCs fail on purpose)
    qc_bias_pct: Mapping[str, float] = field(default_factory=dict)
    # (analyte, level): that calibrator's analyte response x 1.5
    spoil_calibrator: tuple[str, str] | None = None
    # fraction of the previous injection's analyte amount that appears in the next injection
    carryover_fraction: float = 5e-5
    # sample_ids whose IS response is cut to 20 %
    is_dropout: tuple[str, ...] = ()
    # a validation (accuracy and precision) run: N replicates of each of LLOQ, LQC, MQC and HQC in
    # place of the three QC sets, half before the study samples and half after; None = study run
    qc_replicates: int | None = None
    # a baseline-resolved plasma interference 0.3-0.4 min after each analyte, in every sample
    matrix_peak: bool = False
    # a partly resolved neighbour of each analyte (1.25-1.5 FWHM away, a valley between)
    neighbour_peak: bool = False
    # the whole run elutes this many minutes from the method's RTs (windows widened to match)
    rt_offset_min: float = 0.0
    # how the traces are acquired: "instrument" (counting noise, jagged tops, ... as measured on
    # real QTRAP files) or "smooth" (white noise on a fixed 0.35 s grid, the former simulator;
    # the default until the peak finder copes with the instrument's traces)
    acquisition: str = DEFAULT_ACQUISITION

    def __post_init__(self):
        if isinstance(self.n_unknowns, bool) or not isinstance(self.n_unknowns, (int, np.integer)):
            raise ValueError(f"n_unknowns must be an integer, got {self.n_unknowns!r}")
        object.__setattr__(self, "n_unknowns", int(self.n_unknowns))
        if self.n_unknowns < MIN_UNKNOWNS:
            raise ValueError(
                f"n_unknowns must be at least {MIN_UNKNOWNS} (the designed BLQ, ALQ, diluted and "
                f"pre-dose samples plus one ordinary sample), got {self.n_unknowns}"
            )
        for name in ("matrix_peak", "neighbour_peak"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))
        if self.acquisition not in ACQUISITIONS:
            raise ValueError(f"acquisition must be one of {', '.join(ACQUISITIONS)}, got {self.acquisition!r}")
        offset = self.rt_offset_min
        if (
            isinstance(offset, bool)
            or not isinstance(offset, (int, float, np.integer, np.floating))
            or not math.isfinite(offset)
            or abs(offset) > MAX_RT_OFFSET_MIN
        ):
            raise ValueError(
                f"rt_offset_min must be a number of minutes within +-{MAX_RT_OFFSET_MIN:g}, got {offset!r}"
            )
        object.__setattr__(self, "rt_offset_min", float(offset))
        if not (math.isfinite(self.carryover_fraction) and 0 <= self.carryover_fraction < 1):
            raise ValueError(f"carryover_fraction must be in [0, 1), got {self.carryover_fraction!r}")
        bias = dict(self.qc_bias_pct)
        for analyte, value in bias.items():
            if not math.isfinite(float(value)) or float(value) <= -100:
                raise ValueError(f"qc_bias_pct[{analyte!r}] must be a finite percentage above -100, got {value!r}")
        object.__setattr__(self, "qc_bias_pct", _FrozenMapping({k: float(v) for k, v in bias.items()}))
        if isinstance(self.is_dropout, str):
            object.__setattr__(self, "is_dropout", (self.is_dropout,))
        else:
            object.__setattr__(self, "is_dropout", tuple(self.is_dropout))
        if self.qc_replicates is not None and (
            isinstance(self.qc_replicates, bool)
            or not isinstance(self.qc_replicates, (int, np.integer))
            or self.qc_replicates < 1
        ):
            raise ValueError(f"qc_replicates must be a positive integer or None, got {self.qc_replicates!r}")
        if self.spoil_calibrator is not None:
            spoil = tuple(self.spoil_calibrator)
            if len(spoil) != 2:
                raise ValueError(f"spoil_calibrator must be (analyte, level), got {self.spoil_calibrator!r}")
            object.__setattr__(self, "spoil_calibrator", spoil)


def truth_path_for(out_dir: Path | str) -> Path:
    """Where simulate_batch writes the truth file of a batch folder."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}_truth.csv"


def simulate_batch(
    out_dir: Path | str,
    seed: int,
    matrix: str = "plasma",
    method: Method | None = None,
    options: SimulationOptions = SimulationOptions(),
) -> Path:
    """Write a simulated batch folder (worklist.csv and one mzML per injection) with known truth.

    Parameters
    ----------
    out_dir : path-like
        The batch folder to write.
    seed : int
        The same seed and options give byte-identical files.
    matrix : {"plasma", "csf"}
        The matrix of the calibrators and QCs.
    method : Method, optional
        The assay to simulate (default: the shipped method).
    options : SimulationOptions
        Batch design and acquisition (the library default is the smooth acquisition).

    Returns
    -------
    Path
        The truth file beside the folder (OUT_DIR_truth.csv): every injection's true values."""
    return _simulate(out_dir, seed, matrix, method, options)


def _simulate(
    out_dir: Path | str,
    seed: int,
    matrix: str = "plasma",
    method: Method | None = None,
    options: SimulationOptions = SimulationOptions(),
    unknowns: list[_Injection] | None = None,
    stream: tuple[int, ...] = (),
    run_start: datetime = RUN_START,
) -> Path:
    """simulate_batch, optionally with given study samples (in injection order), its own random
    streams (`stream` prefixes every seed key) and start time; the worklist then also carries
    the samples' extra columns."""
    if matrix not in BATCH_MATRICES:
        raise ValueError(f"unknown batch matrix {matrix!r}: simulate_batch knows {', '.join(BATCH_MATRICES)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if method is None:
        method = load_method(default_method_path())
    cal_set = method.calibrator_set_for(matrix)
    if cal_set is None:
        raise ValueError(f"method {method.name!r} has no calibrator set for matrix {matrix!r}")
    ranges = _ranges(method, cal_set)
    _check_options(method, cal_set, options)

    design_rng = _rng(seed, *stream, 0)
    injections = _design(method, cal_set, matrix, options, ranges, design_rng, unknowns)
    _check_dropout(options, injections)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    physics = _Physics(
        method, matrix, options, ranges, n_injections=len(injections), rng=_rng(seed, *stream, 1), key=(seed, *stream)
    )

    previous_amount = {a.name: 0.0 for a in method.analytes}
    for inj in injections:
        chroms, previous_amount = physics.injection(inj, previous_amount, _rng(seed, *stream, 2, inj.number))
        write_chromatogram_mzml(
            out_dir / inj.file,
            chroms,
            compress=options.compress,
            gzip=options.gzip,
            start_timestamp=(run_start + (inj.number - 1) * INJECTION_INTERVAL).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )

    truth = truth_path_for(out_dir)
    atomic_write(truth, _truth_csv(method, injections))
    _remove_stale_files(out_dir, {inj.file for inj in injections})
    atomic_write(out_dir / "worklist.csv", _worklist_csv(injections))
    return truth


# ---------------------------------------------------------------------------------------------
# Design: which samples, in which order, with which true concentrations


@dataclass
class _Injection:
    number: int  # 1-based injection order
    sample_id: str
    sample_type: str
    level: str = ""
    matrix: str = ""
    subject_id: str = ""
    visit: str = ""
    timepoint: str = ""
    dilution_factor: int = 1
    truth: dict[str, float] = field(default_factory=dict)  # ng/mL in the sample as received
    interference: dict[str, str] = field(default_factory=dict)  # analyte -> hit transition name
    file: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # extra worklist columns (dose and sampling times)


@dataclass(frozen=True)
class _Range:
    lloq: float
    uloq: float


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _calibrator_levels(cal_set: CalibratorSet) -> list[str]:
    return sorted((lv for lv in cal_set.levels if CALIBRATOR_LEVEL.match(lv)), key=lambda lv: int(lv[3:]))


def _ranges(method: Method, cal_set: CalibratorSet) -> dict[str, _Range]:
    out = {}
    for a in method.analytes:
        values = [v for lv in _calibrator_levels(cal_set) if (v := cal_set.nominal(lv, a.name)) is not None]
        if not values:
            raise ValueError(f"calibrator set {cal_set.name!r} has no calibrator for analyte {a.name!r}")
        out[a.name] = _Range(min(values), max(values))
    return out


def _check_options(method: Method, cal_set: CalibratorSet, options: SimulationOptions) -> None:
    names = {a.name for a in method.analytes}
    unknown = sorted(set(options.qc_bias_pct) - names)
    if unknown:
        raise ValueError(
            f"qc_bias_pct names unknown analyte(s) {', '.join(unknown)} (method has {', '.join(sorted(names))})"
        )
    if options.spoil_calibrator is not None:
        analyte, level = options.spoil_calibrator
        if analyte not in names:
            raise ValueError(f"spoil_calibrator: unknown analyte {analyte!r}")
        if level not in _calibrator_levels(cal_set) or cal_set.nominal(level, analyte) is None:
            raise ValueError(f"spoil_calibrator: {analyte} has no calibrator level {level!r}")


def _check_dropout(options: SimulationOptions, injections: list[_Injection]) -> None:
    ids = {inj.sample_id for inj in injections}
    missing = [s for s in options.is_dropout if s not in ids]
    if missing:
        raise ValueError(f"is_dropout names sample id(s) not in the batch: {', '.join(missing)}")


def _round(x: float) -> float:
    """Truth values as written to the truth file (12 significant digits), used by the physics too."""
    return float(f"{x:.12g}")


def _design(
    method: Method,
    cal_set: CalibratorSet,
    matrix: str,
    options: SimulationOptions,
    ranges: dict[str, _Range],
    rng: np.random.Generator,
    unknowns: list[_Injection] | None = None,
) -> list[_Injection]:
    analytes = [a.name for a in method.analytes]
    zero = {a: 0.0 for a in analytes}
    qc_counter: dict[str, int] = {}

    def qc(level: str) -> _Injection | None:
        found = {a: cal_set.nominal(level, a) for a in analytes}
        nominals = {a: v for a, v in found.items() if v is not None}
        if len(nominals) < len(found):
            return None
        qc_counter[level] = qc_counter.get(level, 0) + 1
        n = qc_counter[level]
        sample_id = f"DQC-{n}" if level == "DQC" else f"QC-{level}-{n}"
        truth = {a: _round(v * (1 + options.qc_bias_pct.get(a, 0.0) / 100)) for a, v in nominals.items()}
        return _Injection(
            0, sample_id, "qc", level, matrix, dilution_factor=DILUTION if level == "DQC" else 1, truth=truth
        )

    def qc_set(levels: tuple[str, ...]) -> list[_Injection]:
        return [q for q in (qc(lv) for lv in levels) if q is not None]

    def blank(n: int) -> _Injection:
        return _Injection(0, f"BLK-{n}", "blank", matrix=matrix, truth=dict(zero))

    calibrators = [
        _Injection(0, lv, "calibrator", lv, matrix, truth={a: _round(cal_set.nominal(lv, a) or 0.0) for a in analytes})
        for lv in _calibrator_levels(cal_set)
    ]
    if unknowns is None:
        unknowns = _unknowns(method, matrix, options.n_unknowns, ranges, rng)
    half = (len(unknowns) + 1) // 2

    if options.qc_replicates is None:
        qcs_before, qcs_between, qcs_after = qc_set(QC_SET_1), qc_set(QC_SET_2), qc_set(QC_SET_3)
    else:
        first = (options.qc_replicates + 1) // 2
        qcs_before = [q for _ in range(first) for q in qc_set(QC_SET_1)]
        qcs_between = []
        qcs_after = [q for _ in range(options.qc_replicates - first) for q in qc_set(QC_SET_1)]
    order = (
        [blank(1), _Injection(0, "ZERO-1", "zero", matrix=matrix, truth=dict(zero))]
        + calibrators
        + [blank(2)]
        + qcs_before
        + unknowns[:half]
        + qcs_between
        + unknowns[half:]
        + qcs_after
        + [blank(3)]
    )
    width = max(3, len(str(len(order))))
    seen: set[str] = set()
    for number, inj in enumerate(order, start=1):
        if inj.sample_id in seen:  # cannot happen with the built-in naming; keep the contract anyway
            raise AssertionError(f"duplicate sample id {inj.sample_id}")
        seen.add(inj.sample_id)
        inj.number = number
        inj.file = f"{number:0{width}d}_{_safe(inj.sample_id)}.mzML" + (".gz" if options.gzip else "")
    return order


def _safe(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id).strip("_") or "sample"


def _unknown_slots(n: int, matrix: str) -> list[tuple[str, str, str, str]]:
    """(subject, visit, timepoint, matrix) for n study samples; sample ids do not depend on the seed.

    Plasma batch: subjects with paired serum + bone marrow draws, subjects on plasma, and
    subjects with serum at both visits and marrow at C1D15. CSF batch: CSF at C1D15 and C2D1.
    The first slot is a pre-dose (C1D1) sample of subject S001.
    """
    first = "csf" if matrix == "csf" else "serum"
    slots = [("S001", "C1D1", "pre-dose", first)]
    subject = 1
    while len(slots) < n:
        sid = f"S{subject:03d}"
        for visit in ("C1D15", "C2D1"):
            if matrix == "csf":
                mats: tuple[str, ...] = ("csf",)
            elif subject % 3 == 1:
                mats = ("serum", "marrow")
            elif subject % 3 == 2:
                mats = ("plasma",)
            else:
                mats = ("serum", "marrow") if visit == "C1D15" else ("serum",)
            slots.extend((sid, visit, "trough", m) for m in mats)
        subject += 1
    return slots[:n]


def _unknowns(
    method: Method,
    matrix: str,
    n: int,
    ranges: dict[str, _Range],
    rng: np.random.Generator,
) -> list[_Injection]:
    analytes = [a.name for a in method.analytes]
    slots = _unknown_slots(n, matrix)
    designs = ["predose"] + ["normal"] * (n - 1)
    for idx, kind in zip(rng.choice(np.arange(1, n), size=4, replace=False), ("blq", "blq", "alq", "diluted")):
        designs[int(idx)] = kind

    out = []
    for (subject, visit, timepoint, m), kind in zip(slots, designs):
        truth = {}
        for a in analytes:
            r = ranges[a]
            if kind == "predose":
                c = 0.0
            elif kind == "blq":
                c = rng.uniform(0.3, 0.7) * r.lloq
            elif kind == "alq":
                c = rng.uniform(1.5, 3.0) * r.uloq
            elif kind == "diluted":
                c = rng.uniform(2.0, 8.0) * r.uloq
            else:
                c = math.exp(rng.uniform(math.log(1.5 * r.lloq), math.log(0.9 * r.uloq)))
            truth[a] = _round(c)
        out.append(
            _Injection(
                0,
                f"{subject}-{visit}-{MATRIX_SUFFIX[m]}",
                "unknown",
                "",
                m,
                subject,
                visit,
                timepoint,
                DILUTION if kind == "diluted" else 1,
                truth,
            )
        )

    # co-eluting qualifier interferences: about 1 unknown in 30, at least one per batch
    with_qualifiers = [a for a in method.analytes if a.qualifiers]
    normal = [i for i, kind in enumerate(designs) if kind == "normal"]
    n_hit = max(1, round(n / 30))
    hits = rng.choice(np.array(normal), size=min(n_hit, len(normal)), replace=False) if normal else np.array([], int)
    for idx in sorted(int(i) for i in hits):
        if with_qualifiers:
            hit = with_qualifiers[int(rng.integers(len(with_qualifiers)))]
            out[idx].interference[hit.name] = hit.qualifiers[0].name

    return [out[int(i)] for i in rng.permutation(n)]


# ---------------------------------------------------------------------------------------------
# Physics: from true concentrations to chromatograms


def emg_shape(t_s: np.ndarray, sigma_s: float, tau_s: float) -> np.ndarray:
    """Exponentially modified Gaussian with unit area and its apex (mode) at t = 0 (seconds)."""
    k = tau_s / sigma_s
    return exponnorm.pdf(t_s / sigma_s + _emg_mode(k), k) / sigma_s


def emg_height_per_area(sigma_s: float, tau_s: float) -> float:
    """Apex height of a unit-area EMG, in 1/s."""
    k = tau_s / sigma_s
    return float(exponnorm.pdf(_emg_mode(k), k)) / sigma_s


def _emg_mode(k: float) -> float:
    """Mode of the standard exponnorm(K) density (grid search, then a parabola through the top)."""
    x = np.linspace(-1.0, k + 1.0, 2001)
    y = exponnorm.logpdf(x, k)
    i = int(np.clip(np.argmax(y), 1, len(x) - 2))
    y0, y1, y2 = y[i - 1], y[i], y[i + 1]
    denom = y0 - 2 * y1 + y2
    step = x[1] - x[0]
    return float(x[i] + (0.5 * step * (y0 - y2) / denom if denom != 0 else 0.0))


def emg_fwhm(sigma_s: float, tau_s: float) -> float:
    """Full width at half maximum of an EMG, in seconds."""
    grid = np.arange(-6 * sigma_s, 6 * sigma_s + 12 * tau_s, min(sigma_s, tau_s or sigma_s) / 200)
    y = emg_shape(grid, sigma_s, tau_s)
    above = grid[y >= 0.5 * y.max()]
    return float(above[-1] - above[0])


@dataclass(frozen=True)
class CycleProfile:
    """The scheduled-SRM cycle time (the sampling interval of every trace) along a run.

    A triple quad steps through the transitions whose windows are open, one dwell each; the cycle
    time therefore changes along the run as windows open and close (0.4-1 s on the real files of
    a large panel, the same in every injection of a batch). Drawn log-uniform in CYCLE_RANGE_S
    every CYCLE_KNOT_MIN, linear in between.
    """

    knots_min: np.ndarray
    cycle_s: np.ndarray

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        end_min: float,
        cycle_range: tuple[float, float] = CYCLE_RANGE_S,
        knot_min: float = CYCLE_KNOT_MIN,
    ) -> CycleProfile:
        """A cycle time per knot along the run, drawn log-uniform from cycle_range (seconds)."""
        knots = np.arange(0.0, end_min + 2 * knot_min, knot_min)
        cycle = np.exp(rng.uniform(math.log(cycle_range[0]), math.log(cycle_range[1]), len(knots)))
        return cls(knots, cycle)

    def starts(self, begin_min: float, end_min: float) -> np.ndarray:
        """Start times (min) of the cycles from begin_min to one cycle past end_min."""
        out = [begin_min]
        while out[-1] <= end_min:
            out.append(out[-1] + float(np.interp(out[-1], self.knots_min, self.cycle_s)) / 60.0)
        return np.array(out)


def sample_times(starts: np.ndarray, slot: float, lo: float, hi: float) -> np.ndarray:
    """The times (min) one transition is read at: `slot` (0-1) of the way through each cycle,
    within its acquisition window [lo, hi]."""
    t = starts[:-1] + slot * np.diff(starts)
    return t[(t >= lo) & (t <= hi)]


def acquire(
    rate_cps: np.ndarray,
    dwell_s: float,
    scatter: float,
    rng: np.random.Generator,
    *,
    dispersion: float = COUNT_DISPERSION,
    spike_probability: float = SPIKE_PROBABILITY,
    spike_counts: tuple[float, float] = SPIKE_COUNTS,
    dropout_probability: float = DROPOUT_PROBABILITY,
    saturation: float = SATURATION,
) -> np.ndarray:
    """What a pulse-counting SRM detector writes for an expected ion rate (cps) at each point.

    Each point counts ions for one dwell: the ion current first scatters from point to point by
    a lognormal factor (SD `scatter`, mean 1: spray and transmission flicker, what makes a high
    peak's top jagged), then the counts are drawn with variance `dispersion` x their mean (ions
    counted singly or, for a share of them, as double pulses; 1 = Poisson). A point receives a
    burst of extra counts with `spike_probability` and reads 0 with `dropout_probability`; the
    count rate is written as counts / dwell in whole cps (so intensities sit on steps of
    1 / dwell, and a low baseline is mostly zeros), capped at the detector's saturation.

    Every point uses the same number of random draws whatever its rate, so the same generator
    state gives the same noise pattern for a different signal (common random numbers: turning
    an option on changes only what it should).
    """
    from scipy.stats import poisson

    rate = np.maximum(np.asarray(rate_cps, dtype=np.float64), 0.0)
    n = len(rate)
    flicker = np.exp(scatter * rng.standard_normal(n) - 0.5 * scatter**2)
    u_single, u_double = rng.random(n), rng.random(n)
    u_spike, u_height, u_drop = rng.random(n), rng.random(n), rng.random(n)
    mean = rate * dwell_s * flicker
    double = (dispersion - 1.0) / (3.0 - dispersion)  # share of double pulses: var/mean = dispersion
    counts = poisson.ppf(u_single, mean * (1 - double) / (1 + double)) + 2 * poisson.ppf(
        u_double, mean * double / (1 + double)
    )
    low, high = np.log(spike_counts[0]), np.log(spike_counts[1])
    counts = counts + np.where(u_spike < spike_probability, np.round(np.exp(low + (high - low) * u_height)), 0.0)
    counts = np.where(u_drop < dropout_probability, 0.0, counts)
    return np.clip(np.round(counts / dwell_s), 0.0, saturation).astype(np.float32)


@dataclass(frozen=True)
class _Extra:
    """A peak of another compound in an analyte's traces (matrix peak or neighbour), per batch."""

    offset: float  # min after the analyte's apex (matrix peak) or in FWHM of the analyte (neighbour)
    sigma: float
    tau: float
    size: float  # matrix peak: height (cps) on the quantifier; neighbour: height / the analyte's
    qualifier_ratio: float


class _Physics:
    def __init__(
        self,
        method: Method,
        matrix: str,
        options: SimulationOptions,
        ranges: dict[str, _Range],
        n_injections: int,
        rng: np.random.Generator,
        key: tuple[int, ...] = (0,),
    ):
        self.method = method
        self.options = options
        self.ranges = ranges
        self.key = key  # (seed, *stream): per-trace random streams are derived from it
        self.volume = INJECTION_VOLUME[matrix]
        h = emg_height_per_area(NOMINAL_SIGMA_S, NOMINAL_TAU_S)
        reference = method.calibrator_set_for("plasma") or method.calibrator_set_for(matrix)
        if reference is None:
            raise ValueError(
                f"the method has no calibrator set for plasma or {matrix}: nothing to scale the responses by"
            )
        ref_ranges = _ranges(method, reference)
        # k: area (counts*s) per ng/mL injected at V = 1
        self.k = {
            a.name: LLOQ_HEIGHT.get(a.name, DEFAULT_LLOQ_HEIGHT) / ref_ranges[a.name].lloq / h for a in method.analytes
        }
        self.k_is = {i.name: IS_HEIGHT.get(i.name, DEFAULT_IS_HEIGHT) / h for i in method.internal_standards}
        # LLOQ heights of this batch's curve, the scale of the small interferences
        self.lloq_height = {a.name: self.k[a.name] * self.volume * ranges[a.name].lloq * h for a in method.analytes}
        for i in method.internal_standards:
            users = [self.lloq_height[a.name] for a in method.analytes if a.internal_standard == i.name]
            self.lloq_height[i.name] = min(users) if users else DEFAULT_LLOQ_HEIGHT
        self.transitions = method.transitions()
        steps = np.arange(n_injections) / max(n_injections - 1, 1)
        self.rt_shift = RT_DRIFT_END_MIN * steps + rng.normal(0.0, RT_JITTER_MIN, n_injections)
        self.sensitivity = 1.0 - SENSITIVITY_LOSS * steps
        self.window_half = WINDOW_HALF_MIN + abs(options.rt_offset_min)
        last = max(method.expected_rt(t) for t in self.transitions) + self.window_half
        self.run_end_min = math.ceil((last + 0.5) * 10) / 10

        # the instrument and the method's schedule, the same in every injection of the batch
        self.cycle = CycleProfile.draw(rng, self.run_end_min)
        self.cycle_starts = self.cycle.starts(0.0, self.run_end_min)
        self.smooth_dt_min = SMOOTH_CYCLE_S / 60.0
        self.slot = {t: rng.random() for t in self.transitions}
        self.dwell = {t: rng.uniform(*DWELL_RANGE_S) for t in self.transitions}
        self.background = {t: math.exp(rng.uniform(*np.log(BACKGROUND_CPS))) for t in self.transitions}
        self.scatter = rng.uniform(*TOP_SCATTER_RANGE)
        compounds = [a.name for a in method.analytes] + [s.name for s in method.internal_standards]
        self.shape = {c: (rng.uniform(*PEAK_SIGMA_S), rng.uniform(*PEAK_TAU_S)) for c in compounds}

        # the optional situations, drawn whether used or not (their own stream)
        extra_rng = _rng(*key, 3)
        self.matrix_peak: dict[str, _Extra] = {}
        self.neighbour: dict[str, _Extra] = {}
        for a in method.analytes:
            r = ranges[a.name]
            per_conc = self.k[a.name] * self.volume * h  # cps per ng/mL (nominal shape)
            low, high = per_conc * math.sqrt(r.lloq * r.uloq), per_conc * MATRIX_PEAK_TOP * r.uloq
            self.matrix_peak[a.name] = _Extra(
                extra_rng.uniform(*MATRIX_PEAK_DELAY_MIN),
                extra_rng.uniform(*PEAK_SIGMA_S),
                extra_rng.uniform(*PEAK_TAU_S),
                math.exp(extra_rng.uniform(math.log(low), math.log(high))),
                extra_rng.uniform(*MATRIX_PEAK_QUALIFIER_RATIO),
            )
            side = 1.0 if extra_rng.random() < 0.5 else -1.0
            self.neighbour[a.name] = _Extra(
                side * extra_rng.uniform(*NEIGHBOUR_FWHM),
                0.0,
                0.0,
                extra_rng.uniform(*NEIGHBOUR_HEIGHT),
                extra_rng.uniform(0.8, 1.25),
            )

    def injection(self, inj: _Injection, previous_amount: dict[str, float], rng: np.random.Generator):
        """The chromatograms of one injection and the analyte amounts it leaves for carry-over."""
        method, options = self.method, self.options
        instrument = options.acquisition == "instrument"
        i = inj.number - 1
        shift = float(self.rt_shift[i]) + options.rt_offset_min
        scale = float(self.sensitivity[i])
        matrix_effect = {
            s.name: MATRIX_EFFECT_MEAN.get(inj.matrix, 1.0) * math.exp(rng.normal(0.0, MATRIX_EFFECT_SIGMA))
            for s in method.internal_standards
        }
        if instrument:  # each compound keeps its own shape through the batch
            shapes = {
                c: (sigma * math.exp(rng.normal(0.0, SHAPE_JITTER)), tau * math.exp(rng.normal(0.0, SHAPE_JITTER)))
                for c, (sigma, tau) in self.shape.items()
            }
        else:
            shapes = {c: (rng.uniform(*SMOOTH_SIGMA_S), rng.uniform(*SMOOTH_TAU_S)) for c in self.shape}

        area: dict[Transition, float] = {}
        amount: dict[str, float] = {}
        for a in method.analytes:
            own = inj.truth.get(a.name, 0.0) / inj.dilution_factor
            c = own + options.carryover_fraction * previous_amount.get(a.name, 0.0)
            amount[a.name] = c
            compression = max(0.5, 1.0 - COMPRESSION_AT_ULOQ * c / self.ranges[a.name].uloq)
            noise = math.exp(rng.normal(0.0, RATIO_NOISE_SIGMA))
            q_area = self.k[a.name] * self.volume * c * compression * matrix_effect[a.internal_standard] * scale * noise
            if options.spoil_calibrator == (a.name, inj.level) and inj.sample_type == "calibrator":
                q_area *= SPOIL_FACTOR
            area[a.quantifier] = q_area
            for q in a.qualifiers:
                ratio = ION_RATIO.get(a.name, DEFAULT_ION_RATIO) * 0.5 ** (q.index - 1)
                area[q] = q_area * ratio * math.exp(rng.normal(0.0, ION_RATIO_NOISE_SIGMA))
        for s in method.internal_standards:
            is_area = 0.0 if inj.sample_type == "blank" else self.k_is[s.name] * matrix_effect[s.name] * scale
            if inj.sample_id in options.is_dropout:
                is_area *= IS_DROPOUT_FACTOR
            area[s.transition] = is_area
        # the optional situations draw from their own stream, so the others' noise stays as it was
        situation_rng = _rng(*self.key, 5, inj.number)
        matrix_amount = {a.name: math.exp(situation_rng.normal(0.0, MATRIX_PEAK_SIGMA)) for a in method.analytes}

        chroms = []
        for index, t in enumerate(self.transitions):
            # instrument: one random stream per trace; smooth: the injection's stream, as it always was
            trng = _rng(*self.key, 2, inj.number, index + 1) if instrument else rng
            expected = method.expected_rt(t)
            apex = expected + shift
            sigma, tau = shapes[t.compound]
            lo, hi = expected - self.window_half, expected + self.window_half
            if instrument:
                time = sample_times(self.cycle_starts, self.slot[t], lo, hi)
            else:
                start = lo + trng.uniform(0.0, self.smooth_dt_min)
                time = (
                    start
                    + np.arange(int(math.floor((hi - start) / self.smooth_dt_min + 1e-9)) + 1) * self.smooth_dt_min
                )
            t_s = (time - apex) * 60.0
            signal = np.zeros(len(time))
            if area[t] > 0:
                signal += area[t] * emg_shape(t_s, sigma, tau)

            # a small unrelated peak 0.25-0.45 min from the (offset) method RT (all draws made always)
            hit = trng.random() < INTERFERENCE_PROBABILITY
            side = 1.0 if trng.random() < 0.5 else -1.0
            where = expected + options.rt_offset_min + side * trng.uniform(0.25, 0.45)
            rel_height = math.exp(trng.uniform(math.log(0.01), math.log(2.0)))
            i_sigma, i_tau = trng.uniform(1.5, 3.0), trng.uniform(0.5, 2.0)
            if hit:
                height = rel_height * self.lloq_height[t.compound]
                signal += (
                    height / emg_height_per_area(i_sigma, i_tau) * emg_shape((time - where) * 60.0, i_sigma, i_tau)
                )

            # a co-eluting interference on a qualifier (recorded in the truth file)
            extra = trng.uniform(0.5, 1.0)
            offset = trng.normal(0.0, 0.005)
            c_sigma = sigma * trng.uniform(0.9, 1.2)
            if t.role == "qualifier" and inj.interference.get(t.compound) == t.name and area[t] > 0:
                signal += extra * area[t] * emg_shape((time - apex - offset) * 60.0, c_sigma, tau)

            analyte = t.compound in self.matrix_peak and t.role in ("quantifier", "qualifier")
            if analyte and options.matrix_peak:
                m = self.matrix_peak[t.compound]
                height = m.size * matrix_amount[t.compound] * (1.0 if t.role == "quantifier" else m.qualifier_ratio)
                signal += (
                    height / emg_height_per_area(m.sigma, m.tau) * emg_shape(t_s - m.offset * 60.0, m.sigma, m.tau)
                )
            if analyte and options.neighbour_peak and area[t] > 0:
                m = self.neighbour[t.compound]
                ratio = m.size * (1.0 if t.role == "quantifier" else m.qualifier_ratio)
                signal += ratio * area[t] * emg_shape(t_s - m.offset * emg_fwhm(sigma, tau), sigma, tau)

            u = np.linspace(-1.0, 1.0, len(time))
            if instrument:
                level = self.background[t] * math.exp(trng.normal(0.0, BACKGROUND_SIGMA))
                drift = trng.uniform(-0.3, 0.3) * level
                y = acquire(level + drift * u + signal, self.dwell[t], self.scatter, trng)
            else:
                level = trng.uniform(50.0, 300.0)
                drift = trng.uniform(-0.3, 0.3) * level
                noise_sd = trng.uniform(30.0, 60.0)
                y = (
                    level
                    + drift * u
                    + signal
                    + trng.normal(0.0, noise_sd, len(time))
                    + trng.normal(0.0, 1.0, len(time)) * 0.8 * np.sqrt(signal)
                )
                y = np.clip(y, 0.0, SATURATION).astype(np.float32)
            chroms.append(
                Chromatogram(
                    srm_native_id(t.q1, t.q3, index),
                    t.q1,
                    t.q3,
                    time,
                    y,
                    collision_energy=_collision_energy(t),
                )
            )
        tic = self._tic(chroms)
        return [tic, *chroms], amount

    def _tic(self, chroms: list[Chromatogram]) -> Chromatogram:
        if self.options.acquisition == "instrument":
            grid = self.cycle_starts[self.cycle_starts <= self.run_end_min + 1e-9]
        else:
            grid = np.arange(0.0, self.run_end_min + 1e-9, self.smooth_dt_min)
        total = np.zeros(len(grid))
        for c in chroms:
            total += np.interp(grid, c.time_min, c.intensity.astype(np.float64), left=0.0, right=0.0)
        return Chromatogram("TIC", None, None, grid, total.astype(np.float32), polarity=None)


def _collision_energy(t: Transition) -> float:
    """An illustrative collision energy (eV): rises with precursor m/z, higher for qualifiers."""
    return float(round(0.045 * t.q1 + 12 + (6 if t.role == "qualifier" else 0)))


# ---------------------------------------------------------------------------------------------
# Output tables


def _csv(rows: list[list[str]], header: tuple[str, ...]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _worklist_csv(injections: list[_Injection]) -> bytes:
    extra = list(dict.fromkeys(k for inj in injections for k in inj.extra))
    rows = [
        [
            inj.file,
            inj.sample_id,
            inj.sample_type,
            inj.level,
            inj.matrix,
            inj.subject_id,
            inj.visit,
            inj.timepoint,
            "" if inj.dilution_factor == 1 else str(inj.dilution_factor),
            *(inj.extra.get(k, "") for k in extra),
        ]
        for inj in injections
    ]
    return _csv(rows, (*WORKLIST_COLUMNS, *extra))


def _truth_csv(method: Method, injections: list[_Injection]) -> bytes:
    rows = []
    for inj in injections:
        for a in method.analytes:
            rows.append(
                [
                    inj.sample_id,
                    inj.sample_type,
                    inj.level,
                    inj.matrix,
                    a.name,
                    f"{inj.truth.get(a.name, 0.0):.12g}",
                    str(inj.dilution_factor),
                    inj.interference.get(a.name, ""),
                ]
            )
    return _csv(rows, TRUTH_COLUMNS)


def _remove_stale_files(out_dir: Path, keep: set[str]) -> None:
    """Delete injections a previous simulation wrote into this folder that this one did not rewrite.

    Only files named in the folder's old worklist.csv are touched, never anything else.
    """
    old = out_dir / "worklist.csv"
    if not old.is_file():
        return
    try:
        with old.open(newline="", encoding="utf-8") as fh:
            names = [row.get("file", "") for row in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return
    for name in names:
        if name and name not in keep and "/" not in name and "\\" not in name and name not in ("..", "."):
            target = out_dir / name
            if target.is_file() and re.search(r"\.mzML(\.gz)?$", name):
                target.unlink()


# ---------------------------------------------------------------------------------------------
# A study: paired trough draws (serum or plasma, bone marrow, CSF) analysed in three runs

STUDY_TROUGH = {"flumatinib": (30.0, 300.0), "M1": (5.0, 60.0), "M3": (3.0, 40.0)}  # ng/mL in serum
MARROW_RATIO = (1.3, 2.5)  # marrow : serum, log-uniform per draw and analyte
CSF_RATIO = (0.01, 0.05)  # CSF : serum (imatinib and dasatinib CSF:plasma are ~1-5 %)
LLOQ_CLEARANCE = 1.25  # true CSF values stay outside LLOQ / 1.25 .. LLOQ x 1.25
TROUGH_HOURS = (22.0, 26.0)  # blood draw after the last dose; the designed late draw is at 31 h
LATE_DRAW_HOURS = 31.0
STUDY_START = datetime(2024, 3, 4, 8, 0)  # first dose of S001; one subject enrolled per day
MIN_SUBJECTS = 4
VISIT_DAY = re.compile(r"^C(\d+)D(\d+)$")


@dataclass(frozen=True)
class SimulatedStudy:
    """The batch folders of a simulated study, in acquisition order, and its truth file."""

    runs: tuple[Path, ...]  # plasma/serum + marrow run, CSF run, reanalysis run
    truth: Path  # per subject, visit and analyte: true concentrations per matrix and true ratios


def simulate_study(
    out_dir: Path | str,
    seed: int,
    n_subjects: int = 6,
    visits: tuple[str, ...] = ("C1D15",),
    method: Method | None = None,
) -> SimulatedStudy:
    """Simulate paired trough draws of n subjects analysed as three runs with known truth.

    Writes out_dir/plasma-run (serum, or plasma for every 4th subject, and bone marrow on the
    plasma curve), out_dir/csf-run (CSF on its own curve) and out_dir/reanalysis-run (repeats),
    each with its `_truth.csv` beside it, and out_dir/study_truth.csv with the true ratios.
    Marrow runs 1.3-2.5 x serum and CSF 1-5 % of serum, so some CSF values are BLQ; worklists carry
    the last-dose and sampling date-times. Designed on purpose: the first subject's blood sample
    loses its IS (IS_RESPONSE) and the second one's marrow flumatinib is above the ULOQ (ALQ),
    both repeated in the reanalysis run (the ALQ one diluted 1:10); the first subject's M1 and the
    third one's M3 are BLQ in CSF; the last subject's draw is at 31 h, outside a 20-28 h window.
    """
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) or n_subjects < MIN_SUBJECTS:
        raise ValueError(f"n_subjects must be an integer of at least {MIN_SUBJECTS}, got {n_subjects!r}")
    if not visits or len(set(visits)) != len(visits):
        raise ValueError(f"visits must be distinct visit names, got {visits!r}")
    if method is None:
        method = load_method(default_method_path())
    plasma_set, csf_set = method.calibrator_set_for("plasma"), method.calibrator_set_for("csf")
    if plasma_set is None or csf_set is None:
        raise ValueError(f"method {method.name!r} needs calibrator sets for plasma and csf")
    plasma_ranges, csf_ranges = _ranges(method, plasma_set), _ranges(method, csf_set)
    rng = _rng(seed, 9)
    dose_col, sample_col = method.cohort.last_dose_column, method.cohort.sampling_column
    fmt = "%Y-%m-%dT%H:%M"

    blood, csf, truth_rows = [], [], []
    draws = [(s, v) for s in range(1, int(n_subjects) + 1) for v in visits]
    for index, (s, visit) in enumerate(draws):
        subject = f"S{s:03d}"
        blood_matrix = "plasma" if s % 4 == 3 else "serum"
        last_dose = STUDY_START + timedelta(days=s - 1 + _visit_day(visit, visits) - 1, hours=rng.uniform(-0.5, 0.5))
        late = index == len(draws) - 1
        hours = LATE_DRAW_HOURS if late else rng.uniform(*TROUGH_HOURS)
        drawn = last_dose + timedelta(hours=hours)
        times = {
            blood_matrix: drawn,
            "marrow": drawn + timedelta(hours=rng.uniform(0.1, 0.5)),
            "csf": drawn + timedelta(hours=rng.uniform(0.25, 1.0)),
        }
        conc: dict[str, dict[str, float]] = {blood_matrix: {}, "marrow": {}, "csf": {}}
        for a in method.analytes:
            low, high = STUDY_TROUGH.get(a.name, (5 * plasma_ranges[a.name].lloq, 0.3 * plasma_ranges[a.name].uloq))
            c = math.exp(rng.uniform(math.log(low), math.log(high)))
            marrow_ratio = math.exp(rng.uniform(*np.log(MARROW_RATIO)))
            if index == 1 and a.name == method.analytes[0].name:  # marrow above the ULOQ
                c = rng.uniform(0.7, 0.9) * plasma_ranges[a.name].uloq
                marrow_ratio = rng.uniform(1.8, 2.5)
            csf_lloq = csf_ranges[a.name].lloq
            forced_blq = (index, a.name) in ((0, "M1"), (2, "M3"))
            while True:  # (never more than a few draws)
                csf_c = c * math.exp(rng.uniform(*np.log(CSF_RATIO)))
                if forced_blq:
                    csf_c = rng.uniform(0.3, 0.7) * csf_lloq
                if not (csf_lloq / LLOQ_CLEARANCE < csf_c < csf_lloq * LLOQ_CLEARANCE):
                    break
            conc[blood_matrix][a.name] = _round(c)
            conc["marrow"][a.name] = _round(c * marrow_ratio)
            conc["csf"][a.name] = _round(csf_c)
            values = (
                conc[blood_matrix][a.name],
                conc["marrow"][a.name],
                conc["csf"][a.name],
                conc["marrow"][a.name] / conc[blood_matrix][a.name],
                conc["csf"][a.name] / conc[blood_matrix][a.name],
                csf_lloq,
            )
            truth_rows.append(
                [
                    subject,
                    visit,
                    "trough",
                    a.name,
                    blood_matrix,
                    *(f"{v:.12g}" for v in values),
                    f"{hours:.2f}",
                    str(late).lower(),
                ]
            )

        samples = {
            m: _Injection(
                0,
                f"{subject}-{visit}-{MATRIX_SUFFIX[m]}",
                "unknown",
                "",
                m,
                subject,
                visit,
                "trough",
                1,
                dict(conc[m]),
                extra={dose_col: last_dose.strftime(fmt), sample_col: times[m].strftime(fmt)},
            )
            for m in (blood_matrix, "marrow", "csf")
        }
        blood.extend([samples[blood_matrix], samples["marrow"]])
        csf.append(samples["csf"])

    dropout, alq = blood[0], blood[3]  # first subject's blood sample; second subject's marrow
    repeats = [
        _Injection(
            0,
            dropout.sample_id,
            "unknown",
            "",
            dropout.matrix,
            dropout.subject_id,
            dropout.visit,
            "trough",
            1,
            dict(dropout.truth),
            extra=dict(dropout.extra),
        ),
        _Injection(
            0,
            alq.sample_id,
            "unknown",
            "",
            alq.matrix,
            alq.subject_id,
            alq.visit,
            "trough",
            DILUTION,
            dict(alq.truth),
            extra=dict(alq.extra),
        ),
    ]
    last_draw = max(datetime.strptime(i.extra[sample_col], fmt) for i in csf + blood)
    first_run = datetime.combine(last_draw.date() + timedelta(days=1), RUN_START.time())

    out_dir = Path(out_dir)
    runs = (out_dir / "plasma-run", out_dir / "csf-run", out_dir / "reanalysis-run")
    _simulate(
        runs[0], seed, "plasma", method, SimulationOptions(is_dropout=(dropout.sample_id,)), blood, (1,), first_run
    )
    _simulate(runs[1], seed, "csf", method, SimulationOptions(), csf, (2,), first_run + timedelta(days=1))
    _simulate(runs[2], seed, "plasma", method, SimulationOptions(), repeats, (3,), first_run + timedelta(days=4))
    truth = atomic_write(out_dir / "study_truth.csv", _csv(truth_rows, STUDY_TRUTH_COLUMNS))
    return SimulatedStudy(runs, truth)


STUDY_TRUTH_COLUMNS = (
    "subject_id",
    "visit",
    "timepoint",
    "analyte",
    "reference_matrix",
    "true_reference",
    "true_marrow",
    "true_csf",
    "true_marrow_ratio",
    "true_csf_ratio",
    "csf_lloq",
    "hours_since_dose",
    "late_draw",
)


def _visit_day(visit: str, visits: tuple[str, ...]) -> int:
    """Study day of a visit named C<cycle>D<day> (28-day cycles), else 14 days per listed visit."""
    match = VISIT_DAY.match(visit)
    if match:
        return (int(match.group(1)) - 1) * 28 + int(match.group(2))
    return 14 * (visits.index(visit) + 1)
