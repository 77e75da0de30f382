"""Reference models measured in the same harness as the DiScoFormer: a k-nearest-neighbour
Tanimoto scorer and an autoregressive SMILES Transformer."""
