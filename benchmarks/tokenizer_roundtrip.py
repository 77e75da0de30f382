"""Tokenizer round trip on all of QM9, and encode/decode throughput beside a plain RDKit pass.

    python benchmarks/tokenizer_roundtrip.py [--qm9 PATH] [--repeats 3] [--throughput-rows 20000] [--aromatic-bonds]

With --aromatic-bonds the vocabulary keeps aromatic bonds (results: tokenizer_roundtrip_aromatic).

Correctness: canonical SMILES of decode_raw(one-hot(encode(m))) must equal that of m for every row.
Throughput: molecules/s (median over repeats) on a fixed subset for encode (mol -> tokens),
decode_raw and decode_constrained (tokens -> mol), and, as the reference measured in the same run,
RDKit alone (SMILES -> mol -> canonical SMILES).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from _common import SHARED_DATA, median_rate, write_results

from molgen.chemistry import canonical_smiles, parse_smiles
from molgen.decode import decode_constrained, decode_raw
from molgen.tokenizer import Vocabulary, encode, molecular_graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qm9", default=str(SHARED_DATA / "qm9.csv"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--throughput-rows", type=int, default=20_000)
    parser.add_argument("--aromatic-bonds", action="store_true", help="Aromatic bond type instead of kekulizing.")
    args = parser.parse_args()

    smiles = pd.read_csv(args.qm9)["smiles"].tolist()
    started = time.perf_counter()
    mols = [parse_smiles(s) for s in smiles]
    unparsed = sum(m is None for m in mols)
    vocab = Vocabulary.from_graphs(
        (molecular_graph(m, args.aromatic_bonds) for m in mols if m is not None), aromatic_bonds=args.aromatic_bonds
    )
    atom_eye, bond_eye = np.eye(vocab.num_atom_types), np.eye(vocab.num_bond_types)

    def round_trips(mol) -> bool:
        tokens = encode(mol, vocab)
        decoded = decode_raw(atom_eye[tokens.atoms], bond_eye[tokens.bonds], vocab)
        return decoded.valid and canonical_smiles(decoded.mol) == canonical_smiles(mol)

    failures = [s for s, m in zip(smiles, mols) if m is None or not round_trips(m)]
    charged = [i for i, m in enumerate(mols) if m is not None and any(a.GetFormalCharge() for a in m.GetAtoms())]
    full_pass_s = time.perf_counter() - started

    subset_mols = mols[: args.throughput_rows]
    subset_smiles = smiles[: args.throughput_rows]
    tokens = [encode(m, vocab) for m in subset_mols]
    one_hots = [(atom_eye[t.atoms], bond_eye[t.bonds]) for t in tokens]

    def rdkit_reference() -> int:
        return sum(1 for s in subset_smiles if canonical_smiles(parse_smiles(s)))

    rates = {
        "rdkit_parse_and_canonical_smiles": median_rate(rdkit_reference, args.repeats),
        "encode": median_rate(lambda: len([encode(m, vocab) for m in subset_mols]), args.repeats),
        "decode_raw": median_rate(lambda: len([decode_raw(a, b, vocab) for a, b in one_hots]), args.repeats),
        "decode_constrained": median_rate(
            lambda: len([decode_constrained(a, b, vocab) for a, b in one_hots]), args.repeats
        ),
    }
    payload = {
        "rows": len(smiles),
        "unparsed": unparsed,
        "round_trip_ok": len(smiles) - len(failures),
        "round_trip_fraction": (len(smiles) - len(failures)) / len(smiles),
        "charged_molecules": len(charged),
        "charged_round_trip_ok": len(charged) - sum(smiles[i] in set(failures) for i in charged),
        "failures": failures[:50],
        "vocabulary": vocab.labels,
        "bond_types": list(vocab.bond_types),
        "full_pass_seconds": full_pass_s,
        "throughput_rows": len(subset_mols),
        "molecules_per_second": {name: median for name, (median, _) in rates.items()},
        "molecules_per_second_all_repeats": {name: runs for name, (_, runs) in rates.items()},
    }
    rows = [
        ("round trip (canonical SMILES equal)", f"{payload['round_trip_ok']:,} / {len(smiles):,}"),
        ("of which charged", f"{payload['charged_round_trip_ok']:,} / {len(charged):,}"),
    ] + [(f"{name} (mol/s, median of {args.repeats})", f"{median:,.0f}") for name, (median, _) in rates.items()]
    name = "tokenizer_roundtrip_aromatic" if args.aromatic_bonds else "tokenizer_roundtrip"
    write_results(name, payload, rows, (f"QM9 tokenizer ({', '.join(vocab.bond_types[1:])} bonds)", "value"))


if __name__ == "__main__":
    main()
