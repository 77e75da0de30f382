"""Starting a model from another checkpoint's weights when the vocabularies differ.

Only the layers that read or write atom and bond types depend on the vocabulary: the input
embeddings (noisy channels and, with self-conditioning, the previous estimate) and the output heads.
Their rows and columns are carried over by key, so an atom type or bond type the source knew keeps
what it learned. A new type starts from its nearest old ones: an aromatic atom type with stated
hydrogens from the same element and charge, the aromatic bond from the mean of single and double
(its order 1.5 lies between them). Everything else must have the same shape and is copied; types with
no source keep their fresh initialisation.
"""

from __future__ import annotations

import torch

from molgen.model import DiScoFormer, derived_atom_features
from molgen.tokenizer import Vocabulary

# Bond types without a counterpart in the source, as mixtures of source bond types.
NEW_BOND_SOURCES = {"aromatic": {"single": 0.5, "double": 0.5}}


def atom_mapping(source: Vocabulary, target: Vocabulary) -> torch.Tensor:
    """(target types, source types) weights: 1 for the same key, else for the key without hydrogens."""
    mapping = torch.zeros(target.num_atom_types, source.num_atom_types)
    for row, (symbol, charge, hydrogens) in enumerate(target.atom_types):
        column = source.index((symbol, charge, hydrogens))
        if column is None:
            column = source.index((symbol, charge, 0))
        if column is not None:
            mapping[row, column] = 1.0
    return mapping


def bond_mapping(source: Vocabulary, target: Vocabulary) -> torch.Tensor:
    """(target bond types, source bond types) weights, by name, new types per ``NEW_BOND_SOURCES``."""
    mapping = torch.zeros(target.num_bond_types, source.num_bond_types)
    for row, name in enumerate(target.bond_types):
        sources = {name: 1.0} if name in source.bond_types else NEW_BOND_SOURCES.get(name, {})
        for source_name, weight in sources.items():
            if source_name in source.bond_types:
                mapping[row, source.bond_types.index(source_name)] = weight
    return mapping


def _rows(mapping: torch.Tensor, old: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """Output rows mixed by ``mapping``; rows with no source keep ``fresh``."""
    mixed = mapping @ old.reshape(old.shape[0], -1)
    covered = mapping.sum(dim=1) > 0
    return torch.where(covered[:, None], mixed, fresh.reshape(fresh.shape[0], -1)).reshape(fresh.shape)


def _columns(segments: list[tuple[torch.Tensor | None, int]], old: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """Input columns of a linear layer whose input is a concatenation of segments, each mapped by a
    matrix (None: copied as is) and ``width`` source columns wide."""
    parts, start_old, start_new = [], 0, 0
    for mapping, width in segments:
        block_old = old[:, start_old : start_old + width]
        if mapping is None:
            parts.append(block_old)
            start_new += width
        else:
            block = _rows(mapping, block_old.T, fresh[:, start_new : start_new + mapping.shape[0]].T).T
            parts.append(block)
            start_new += mapping.shape[0]
        start_old += width
    return torch.cat(parts, dim=1)


def transfer_weights(
    target: DiScoFormer, target_vocab: Vocabulary, source_state: dict, source_config: dict, source_vocab: Vocabulary
) -> list[str]:
    """Load ``source_state`` into ``target`` through the vocabulary mappings; returns the names of the
    tensors that were mapped rather than copied. Raises ValueError when the backbones differ."""
    atoms, bonds = atom_mapping(source_vocab, target_vocab), bond_mapping(source_vocab, target_vocab)
    config = target.config
    if bool(source_config.get("self_conditioning", True)) != config.self_conditioning or bool(
        source_config.get("ring_features", False)
    ) != config.ring_features:
        raise ValueError("the source checkpoint's self-conditioning inputs differ from this model's")
    self_cond = config.self_conditioning
    atom_segments = [(atoms, source_vocab.num_atom_types)] + (
        [(atoms, source_vocab.num_atom_types), (None, derived_atom_features(config))] if self_cond else []
    )
    bond_segments = [(bonds, source_vocab.num_bond_types)] * (2 if self_cond else 1)
    mapped_inputs = {"atom_in.weight": atom_segments, "bond_in.weight": bond_segments}
    mapped_outputs = {"atom_head.weight": atoms, "atom_head.bias": atoms,
                      "bond_head.3.weight": bonds, "bond_head.3.bias": bonds}
    state = target.state_dict()
    mapped = []
    for name, fresh in state.items():
        if name not in source_state:
            raise ValueError(f"the source checkpoint has no {name}: another architecture")
        old = source_state[name].to(fresh.dtype)
        if name in mapped_inputs:
            state[name] = _columns(mapped_inputs[name], old, fresh)
            mapped.append(name)
        elif name in mapped_outputs:
            state[name] = _rows(mapped_outputs[name], old, fresh)
            mapped.append(name)
        elif old.shape != fresh.shape:
            raise ValueError(f"{name} is {tuple(old.shape)} in the source and {tuple(fresh.shape)} here")
        else:
            state[name] = old
    target.load_state_dict(state)
    return mapped
