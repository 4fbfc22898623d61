"""Filter expressions against CFITSIO itself: our selected rows == CFITSIO's, expression by expression.

The oracle is CFITSIO's own row filter, `fitsio.FITS(path)[1].where(expr)`
(the evaluator maketime runs), on filter files in the real format: the
simulator's `x<obsid>.xfl.gz` (XTE_MKF, B columns with TNULL 255, E columns
with NaN rows) and a small table made here with every column type the
evaluator types differently (B/I/J with TNULL, K, TZERO 32768, TSCAL, E with
NaN and infinities, D). The corpus is the HEASARC notebooks' expressions,
hand-picked edge cases and a few thousand random expressions from a fixed
seed, rendered with random operator spellings and with parentheses often left
out so precedence is tested too. Both readers are checked: astropy
(`filterkit.row_flags_from_hdu`, test-side) and the package's fast reader
(`gti.row_flags_from_table`).
"""
from __future__ import annotations

import gzip
import random
from pathlib import Path

import fitsio
import numpy as np
import pytest
from astropy.io import fits

from rxte_hpc.core.errors import DataError, UsageError
from rxte_hpc.extract.gti import row_flags_from_table
from rxte_hpc.extract.filterexpr import parse_filter
from rxte_hpc.fits.tableio import read_tables
from rxte_hpc.sim.simulate import simulate_archive

from filterkit import row_flags_from_hdu
from where import REPO

N_RANDOM = 2500
#: Why we may refuse an expression of the random corpus that CFITSIO evaluates: its ISNULL(constant)
#: returns uninitialised memory, and a condition used as a number (`X * (Y > 1)`) is outside our language.
CFITSIO_ONLY = ("ISNULL of a constant", "needs a number")


def _edge_table(path: Path) -> Path:
    rng = np.random.default_rng(16)
    n = 60
    small = rng.integers(-3, 6, n)
    elv = rng.choice([-2.5, 0.0, 0.1, 3.5, 4.0, 4.5, 10.0, 1e30], n).astype(np.float32)
    elv[[3, 17, 40]] = np.nan
    elv[[5, 33]] = np.inf
    elv[21] = -np.inf
    num = rng.integers(0, 6, n).astype(np.uint8)
    num[[2, 9, 40, 41]] = 255
    si = small.astype(np.int16)
    si[[7, 8]] = -1
    dd = rng.choice([-0.0, 0.0, 1.5, -7.5, 2.0, 1e300, 3.0], n)
    columns = [
        fits.Column(name="Time", format="D", unit="s", array=2.0e8 + 16.0 * np.arange(n)),
        fits.Column(name="ELV", format="E", unit="deg", array=elv),
        fits.Column(name="OFFSET", format="E", array=rng.choice([0.0, 0.01, 0.05, 0.1, 0.5], n).astype(np.float32)),
        fits.Column(name="NUM_PCU_ON", format="B", null=255, array=num),
        fits.Column(name="PCU0_ON", format="B", null=255, array=np.where(num == 255, 255, num % 2).astype(np.uint8)),
        fits.Column(name="SI", format="I", null=-1, array=si),
        fits.Column(name="JJ", format="J", array=(small * 7).astype(np.int32)),
        fits.Column(name="KK", format="K", array=(small * 3).astype(np.int64)),
        fits.Column(name="UZ", format="I", bzero=32768, array=rng.integers(0, 65535, n).astype(np.uint16)),
        fits.Column(name="SC", format="I", array=small.astype(np.int16)),  # TSCAL 0.5 added below
        fits.Column(name="DD", format="D", array=dd),
    ]
    hdu = fits.BinTableHDU.from_columns(columns, name="XTE_MKF")
    index = [c.name for c in columns].index("SC") + 1
    hdu.header.insert(f"TFORM{index}", (f"TSCAL{index}", 0.5), after=True)  # a scaled integer is a double
    hdu.writeto(path)
    return path


@pytest.fixture(scope="module")
def filter_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("cfitsio")
    archive = simulate_archive(root / "archive", n_obs=3, seed=16)
    simulated = sorted(Path(archive.root).rglob("stdprod/x*.xfl.gz"))
    assert simulated, "the simulator wrote no filter files"
    plain = []
    for path in simulated[:2]:
        out = root / path.name.removesuffix(".gz")
        out.write_bytes(gzip.decompress(path.read_bytes()))
        plain.append(out)
    return [_edge_table(root / "edge.xfl"), *plain, simulated[2]]


def _cfitsio(path: Path, expr: str) -> list[int] | None:
    """CFITSIO's selected rows, or None when it refuses the expression.

    fitsio 1.4.2 returns garbage for an expression CFITSIO folds to a constant
    false (uninitialised indices, or every row): so the rows are read from the
    expression ANDed with a condition true on every row, which CFITSIO cannot
    fold, and the plain expression only says whether CFITSIO accepts it.
    """
    with fitsio.FITS(str(path)) as f:
        try:
            f[1].where(expr)
        except (OSError, ValueError, RuntimeError):
            return None
        return [int(i) for i in f[1].where(f"({expr}) && Time > -1e300")]


def _ours(path: Path, expr: str) -> tuple[list[int] | None, str]:
    """Our selected rows through both readers (which must agree), or None and why we refused."""
    try:
        parsed = parse_filter(expr)
    except UsageError as exc:
        return None, str(exc)
    try:
        with fits.open(path) as hdul:
            by_astropy = np.nonzero(row_flags_from_hdu(hdul[1], parsed))[0].tolist()
        by_native = np.nonzero(row_flags_from_table(read_tables(path)[0], parsed))[0].tolist()
    except DataError as exc:
        return None, str(exc)
    assert by_astropy == by_native, f"{expr!r}: astropy reader {by_astropy} != native reader {by_native}"
    return by_native, ""


def _check(path: Path, expr: str) -> str:
    """'' when we agree with CFITSIO; otherwise what differs."""
    theirs = _cfitsio(path, expr)
    ours, why = _ours(path, expr)
    if ours is not None and theirs is None:
        return f"{expr!r}: CFITSIO refuses it, we select rows {ours}"
    if ours is None and theirs is not None and not any(reason in why for reason in CFITSIO_ONLY):
        return f"{expr!r}: CFITSIO selects {theirs}, we refuse it: {why}"
    if ours is not None and ours != theirs:
        return f"{expr!r}: CFITSIO selects {theirs}, we select {ours}"
    return ""


HAND_PICKED = [
    # The issue's two examples: integer division in CFITSIO.
    "NUM_PCU_ON/2 > 1", "NUM_PCU_ON/2 == 1",
    # HEASARC's notebooks (docs/science.md#good-time-maketime).
    "(ELV > 4) .AND. (OFFSET < 0.1) .AND. (NUM_PCU_ON > 0 .AND. NUM_PCU_ON < 6)",
    "(ELV > 4) && (OFFSET < 0.1) && (NUM_PCU_ON > 0) && .NOT. ISNULL(ELV) && (NUM_PCU_ON < 6)",
    "(ELV > 4) && (OFFSET < 0.1)", "ELV>4.and.OFFSET<0.1", "ELV > 10 && OFFSET < 0.02",
    # Integer and float arithmetic, truncation, % and ** rules.
    "SI/2 == 0", "-SI/2 == -1", "SI % 3 == -1", "SI % -2 == 1", "JJ/7*7 == JJ", "KK/2 == 1", "KK % 2 == 1",
    "UZ/1000 > 30", "UZ % 7 == 3", "SC/2 == 0", "SC % 1 == 0.5", "DD % 2 == 1.5", "DD % 2 == -1.5",
    "DD % 0.7 > 0", "DD/0 == 0", "ISNULL(DD/0)", "ISNULL(SI/0)", "ISNULL(SI % 0)", "SI**2 == 4", "SI**-1 == 0",
    "SI**-1 < 0", "SI ** 0.5 > 1", "2**SI == 4", "-2**2 == SI", "7 - 3 % 2 == SI", "7 % 3 * 2 == SI",
    "SI - 3 % 2 == 0", "(int)ELV == 4", "(int)(ELV*1e30) < 0", "(float)SI/2 == 0.5", "(int)(SI > 1) == 1",
    "DD*1e10 % 3 > 0", "1e10 % 3 > 1e10",
    # Comparisons, approximate equality, spellings.
    "ELV ~ 4.0000000001", "SI ~ 2", "ELV => 4", "ELV =< 4", "ELV .ge. 4", "ELV GE. 4", "ELV.GE.4", "4.gt.ELV",
    "NUM_PCU_ON .eq. 2 .or. NUM_PCU_ON .EQ. 3", "not.(ELV > 4)", "T", "F || SI > 2", "(SI > 1) == (ELV > 4)",
    "(SI > 1) != T", "OFFSET == 0.1", "OFFSET < 0.1", "ELV == 0.1", "DD == 0", "DD == -0.0",
    # NULLs: TNULL, NaN, infinities, three-valued logic, functions.
    "ISNULL(ELV)", "ISNULL(NUM_PCU_ON)", "ISNULL(SI)", "ELV > -1e38", "ELV != 0", "!(ELV > 4)",
    "ELV > 4 || NUM_PCU_ON > 2", "ELV > 4 && NUM_PCU_ON > 2", "!(ELV > 4 && NUM_PCU_ON > 2)",
    "!(ELV > 4 || NUM_PCU_ON > 2)", "DEFNULL(ELV, 5) > 4", "DEFNULL(NUM_PCU_ON, 0.5) == 0.5",
    "DEFNULL(ELV > 4, SI > 0)", "DEFNULL(ELV > 4, T)", "MIN(ELV, SI) < 1", "MAX(ELV, NUM_PCU_ON) > 3",
    "MIN(NUM_PCU_ON, SI) == 1", "ABS(SI) == 2", "ABS(ELV - 4) < 1", "SQRT(SI) == 1", "ISNULL(SQRT(SI))",
    "ISNULL(LOG(SI))", "LOG10(ELV) > 0", "ISNULL(ASIN(SI))", "ROUND(DD) == 2", "ROUND(-2.5) == SI",
    "FLOOR(SC) == 0", "CEIL(SC) == 1", "EXP(ELV) > 1e30", "ELV*1e308*10 - ELV*1e308*10 != 0",
    "ISNULL(ELV - ELV)", "SIN(SI) > 0", "COS(DD) < 0", "TAN(SC) > 0", "ATAN(DD) > 1", "ARCTAN(DD) > 1",
    # Refused by CFITSIO too: we must refuse them.
    "ELV > 1/0", "LOG(0) < ELV", "SQRT(-1) < ELV", "ELV .Ge. 4", "ELV > 1.e3", "ISNULL (ELV)", "ELV",
    "B1 > 0", "1 < SI < 3", "ELV > 4 &&", "(ELV > 4) + 1 > 0", "-(ELV > 4) < 0", "(ELV > 4) == 1",
    "DEFNULL(ELV, SI > 1)", "ABS(ELV > 1)", "ELV = 4", "ELV 4", "#TSTART > 0", "TIME > 'a'",
    # eval.y's LR parser: a condition == a number shifts on, so these are (A > B) == (C != D) ...
    "SI > 1 == ELV != 4", "SI > 1 .eq. ELV ~ 4", "(SI > 1) != NUM_PCU_ON == 2 == T",
    # ... and these have no parse at all.
    "SI > 1 ~ ELV != 4", "SI > 1 == ELV", "ELV == (SI > 1)", "SI > 1 == ELV != (SI < 3)",
]
#: CFITSIO evaluates these; they are outside the supported language, so parse_filter refuses them.
UNSUPPORTED = [
    "ISNULL(1)",  # CFITSIO answers from uninitialised memory
    "ELV > 1d3",  # CFITSIO's atof reads 1d3 as 1
    ". == 0",  # CFITSIO reads a lone '.' as 0.0
    "ELV{-1} > 4", "ELV > 4 ? T : F", "SI & 1 == 1", "SI | 1 == 1", "SI ^^ 1 == 1", "#NAXIS2 > 0",
    "ELV = 4:5", "(ELV > 4) * 2 > 1", "MIN(ELV) > 0", "0x1F > SI", "$ELV$ > 4",
]


def test_hand_picked_expressions_select_what_cfitsio_selects(filter_files: list[Path]) -> None:
    problems = [p for p in (_check(filter_files[0], e) for e in HAND_PICKED) if p]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("expr", UNSUPPORTED)
def test_what_cfitsio_evaluates_outside_the_language_is_refused_when_parsed(
    filter_files: list[Path], expr: str
) -> None:
    assert _cfitsio(filter_files[0], expr) is not None, f"{expr!r}: CFITSIO refuses it too; move it to HAND_PICKED"
    with pytest.raises(UsageError, match="extract.filter"):
        parse_filter(expr)


def test_the_issue_examples_differed_before_and_agree_now(filter_files: list[Path]) -> None:
    path = filter_files[0]
    with fits.open(path) as hdul:
        num = np.asarray(hdul[1].data["NUM_PCU_ON"])
    expected = np.nonzero((num != 255) & (num // 2 == 1))[0].tolist()
    assert _cfitsio(path, "NUM_PCU_ON/2 == 1") == expected  # rows with 2 or 3 PCUs: integer division
    assert _ours(path, "NUM_PCU_ON/2 == 1")[0] == expected
    assert _ours(path, "NUM_PCU_ON/2 > 1")[0] == _cfitsio(path, "NUM_PCU_ON/2 > 1") == np.nonzero(
        (num != 255) & (num // 2 > 1))[0].tolist()


# --- random expressions ----------------------------------------------------------

_INT_COLUMNS = ["NUM_PCU_ON", "PCU0_ON", "SI", "JJ", "KK", "UZ", "SC"]
_FLOAT_COLUMNS = ["ELV", "OFFSET", "DD"]
_SIM_INT = ["NUM_PCU_ON", "PCU0_ON", "PCU1_ON", "PCU2_ON"]
_SIM_FLOAT = ["ELV", "OFFSET", "TIME_SINCE_SAA", "ELECTRON0", "ELECTRON2"]
_SPELL = {
    "&&": ["&&", ".and.", ".AND.", "and.", "AND."], "||": ["||", ".or.", ".OR.", "or."],
    "!": ["!", ".not.", ".NOT.", "not."], "==": ["==", ".eq.", ".EQ.", "eq."], "!=": ["!=", ".ne.", ".NE."],
    ">": [">", ".gt.", ".GT."], "<": ["<", ".lt.", "LT."], ">=": [">=", "=>", ".ge."], "<=": ["<=", "=<", ".LE."],
    "**": ["**", "^"],
}


class _Random:
    def __init__(self, seed: int, ints: list[str], floats: list[str]) -> None:
        self.rng = random.Random(seed)
        self.ints, self.floats = ints, floats

    def spell(self, op: str) -> str:
        return self.rng.choice(_SPELL.get(op, [op]))

    def wrap(self, text: str) -> str:
        return f"({text})" if self.rng.random() < 0.55 else text

    def name(self) -> str:
        name = self.rng.choice(self.ints + self.floats)
        return name if self.rng.random() < 0.8 else name.lower()

    def literal(self) -> str:
        return self.rng.choice(["0", "1", "2", "3", "5", "16", "255", "0.5", "2.", ".25", "1e1", "4.0", "0.1", "1E-3",
                                "2147483648", "1e300"])

    def num(self, depth: int) -> str:
        r = self.rng.random()
        if depth <= 0 or r < 0.3:
            return self.name() if self.rng.random() < 0.65 else self.literal()
        if r < 0.4:
            return self.rng.choice(["-", "+", "-", "(int)", "(float)"]) + self.wrap(self.num(depth - 1))
        if r < 0.8:
            op = self.rng.choice(["+", "-", "*", "/", "/", "%", "%", "**"])
            return f"{self.wrap(self.num(depth - 1))} {self.spell(op)} {self.wrap(self.num(depth - 1))}"
        one = ["ABS", "SQRT", "LOG10", "FLOOR", "ROUND", "CEIL", "EXP", "LOG"]
        name = self.rng.choice(one + ["MIN", "MAX", "DEFNULL"] * 2)
        if name in one:
            return f"{name}({self.num(depth - 1)})"
        return f"{name}({self.num(depth - 1)}, {self.num(depth - 1)})"

    def cond(self, depth: int) -> str:
        r = self.rng.random()
        if depth <= 0 or r < 0.45:
            op = self.rng.choice([">", "<", ">=", "<=", "==", "!=", "~"])
            return f"{self.wrap(self.num(depth - 1))} {self.spell(op)} {self.wrap(self.num(depth - 1))}"
        if r < 0.75:
            op = self.rng.choice(["&&", "||", "==", "!="])
            return f"{self.wrap(self.cond(depth - 1))} {self.spell(op)} {self.wrap(self.cond(depth - 1))}"
        if r < 0.85:
            return f"{self.spell('!')}{self.rng.choice(['', ' '])}({self.cond(depth - 1)})"
        if r < 0.95:
            return f"ISNULL({self.num(depth - 1) if self.rng.random() < 0.7 else self.cond(depth - 1)})"
        return f"DEFNULL({self.cond(depth - 1)}, {self.cond(depth - 1)})"


@pytest.mark.slow
def test_random_expressions_select_what_cfitsio_selects(filter_files: list[Path]) -> None:
    edge = _Random(1616, _INT_COLUMNS, _FLOAT_COLUMNS)
    sim = _Random(1617, _SIM_INT, _SIM_FLOAT)
    problems = []
    evaluated = 0
    for i in range(N_RANDOM):
        gen, path = (edge, filter_files[0]) if i % 3 else (sim, filter_files[1 + i % 2])
        expr = gen.cond(gen.rng.randint(1, 4))
        problem = _check(path, expr)
        evaluated += _cfitsio(path, expr) is not None
        if problem:
            problems.append(problem)
    assert not problems, f"{len(problems)} of {N_RANDOM} differ:\n" + "\n".join(problems[:40])
    assert evaluated > N_RANDOM // 2  # the corpus is mostly valid expressions, not parse errors


def test_gzipped_simulated_filter_file_reads_like_cfitsio(filter_files: list[Path]) -> None:
    path = filter_files[-1]
    for expr in ("ELV > 4 && OFFSET < 0.1 && NUM_PCU_ON > 0", "ISNULL(NUM_PCU_ON) || TIME_SINCE_SAA > 30",
                 "NUM_PCU_ON/2 == 1 || ELECTRON2 < 0.1"):
        assert _check(path, expr) == ""
        assert _ours(path, expr)[0], f"{expr!r} selects no row: the check would prove little"


@pytest.mark.parametrize("expr", ["(ELV > 4) && (NUM_PCU_ON > 1d3)", "ELV{-1} > 4", "ISNULL (ELV)", "ELV .Ge. 4"])
def test_a_filter_outside_the_language_stops_the_run_before_any_task(tmp_path: Path, capsys, expr: str) -> None:
    """CFITSIO would run these (or reads them otherwise): refused with exit 2 before any ObsID is touched."""
    import yaml

    from rxte_hpc.cli import main

    archive = simulate_archive(tmp_path / "archive", n_obs=2, seed=16)
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    demo.update(run_dir=str(tmp_path / "run"), archive={"root": str(archive.root)},
                scratch={"root": str(tmp_path / "scratch")})
    demo.pop("simulate", None)
    demo["extract"].update(backend="native", prepared=str(Path(archive.root) / "prepared"), filter=expr)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(demo))
    capsys.readouterr()  # the simulator's own log line
    assert main(["run", str(config), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "extract.filter" in err[0] and repr(expr) in err[0], err
    run = tmp_path / "run"
    assert not any(p.is_file() for d in ("lc", "status") if (run / d).exists() for p in (run / d).rglob("*"))
