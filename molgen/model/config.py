"""What a DiScoFormer is, as plain values: sizes, vocabulary facts, and the configs of its density
head and repair adapter. Checkpoints store it as a dict (``to_dict``); ``from_dict`` also reads the
flat layout of checkpoints written before the nested one."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from molgen.model.graphs import AROMATIC_ORDER
from molgen.model.properties import PropertyConfig


@dataclass
class DensityConfig:
    # D also sums a per-atom term over the final atom states (the ELBO it learns is such a sum).
    atom_terms: bool = False
    # D is the mean of this many members (each a [CLS] head plus atom terms). Members past the first
    # are fit by distillation on fresh ELBO targets, each from its own start, so their errors partly
    # cancel (molgen distill --add-members).
    members: int = 1
    # D passes through -softplus(-D): a log-probability, never above 0 nats, and unchanged where the
    # data lies (-softplus(-x) = x - log(1 + e^x), within 1e-6 nats of x below -14). The head's
    # extrapolations to molecules rarer than its distillation targets (N#N at +2 nats) end just
    # below 0, in the same order.
    bounded: bool = True
    # D adds log P(real | molecule): a classifier on the same final states, fit to tell the training
    # molecules from single-edit near misses of them (molgen fit-near-miss). The ELBO the members learn
    # separates a molecule from its single edits poorly (AUROC 0.906 on QM9), though the states carry it.
    near_miss_term: bool = False


@dataclass
class RepairAdapterConfig:
    # Hidden width of the adapter's atom side (0: no adapter): an MLP over each atom's inputs added to
    # its embedding only where the previous estimate's graph is no molecule and the atoms' log-SNR is
    # at least min_logsnr (noisier estimates are never molecules).
    width: int = 0
    # Hidden width of its pair side (0: none): valence, fragment and a third of the ring failures need
    # a bond changed, which the atom side reaches only through attention.
    pair_width: int = 0
    min_logsnr: float = -1.5


@dataclass
class AdapterConfig:
    """Low-rank adapters of one distribution (``molgen.model.adapters``, ``molgen adapt``)."""

    rank: int = 0  # 0: no adapters
    distribution: int = -1  # the [DIST] id whose molecules the adapters act on
    alpha: float = 8.0  # the update is scaled by alpha / rank, so its size does not depend on the rank

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError("adapter rank must be at least 0")


# Config fields of earlier checkpoints and the value every shipped model had: measured not to help
# (ring features: docs/notes/) or never set. A checkpoint with another value cannot be rebuilt.
RETIRED_FIELDS = {"ring_features": False, "fourier_features": 16, "density_scale": 10.0}
# Flat fields of earlier checkpoints -> (nested config, its field).
FLAT_FIELDS = {
    "density_atom_terms": ("density", "atom_terms"), "density_members": ("density", "members"),
    "repair_adapter": ("repair", "width"), "repair_pair_adapter": ("repair", "pair_width"),
    "repair_min_logsnr": ("repair", "min_logsnr"),
}


@dataclass
class DiScoConfig:
    num_atom_types: int
    max_atoms: int
    atom_valences: tuple[int, ...]  # allowed valence per atom type, for the valence features
    bond_orders: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)  # per bond type, for the valence features
    num_distributions: int = 1  # learned [DIST] embeddings; index num_distributions is the null one
    d_model: int = 128
    d_pair: int = 32
    n_layers: int = 4
    n_heads: int = 8
    d_ff: int = 256
    self_conditioning: bool = True
    kekule_features: bool = False  # whether the previous estimate's aromatic bonds can be kekulized, per atom
    density: DensityConfig = field(default_factory=DensityConfig)
    repair: RepairAdapterConfig = field(default_factory=RepairAdapterConfig)
    properties: PropertyConfig = field(default_factory=PropertyConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)  # low-rank adapters of one distribution (molgen adapt)

    def __post_init__(self):
        if self.kekule_features and AROMATIC_ORDER not in self.bond_orders:
            raise ValueError("Kekulé features read aromatic bonds: this vocabulary has none (--aromatic-bonds)")
        if self.repair.width and not self.kekule_features:
            raise ValueError("the repair adapter is gated by the Kekulé features (--kekule-features)")
        if self.repair.pair_width and not self.repair.width:
            raise ValueError("the pair side of the repair adapter needs its atom side (width)")

    @property
    def num_bond_types(self) -> int:
        return len(self.bond_orders)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["atom_valences"] = list(self.atom_valences)
        data["properties"] = {key: list(value) for key, value in data["properties"].items()}
        data["bond_orders"] = list(self.bond_orders)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "DiScoConfig":
        data = dict(data)
        for name, shipped in RETIRED_FIELDS.items():
            value = data.pop(name, shipped)
            if value != shipped:
                raise ValueError(f"this checkpoint's model uses {name}={value!r}, which molgen retired "
                                 f"(every shipped model had {shipped!r}); load it with molgen 0.1")
        nested = {"density": dict(data.pop("density", {})), "repair": dict(data.pop("repair", {}))}
        properties = dict(data.pop("properties", {}))
        adapter = dict(data.pop("adapter", {}))
        for flat, (part, name) in FLAT_FIELDS.items():
            if flat in data:
                nested[part][name] = data.pop(flat)
        data["atom_valences"] = tuple(data["atom_valences"])
        # Configs written before aromatic bonds name a count of Kekulé bond types instead.
        data.pop("num_bond_types", None)
        data["bond_orders"] = tuple(float(order) for order in data.get("bond_orders", cls.bond_orders))
        return cls(**data, density=DensityConfig(**nested["density"]), repair=RepairAdapterConfig(**nested["repair"]),
                   properties=PropertyConfig(**properties), adapter=AdapterConfig(**adapter))
