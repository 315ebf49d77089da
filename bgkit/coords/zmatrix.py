"""A z-matrix built automatically from a molecule's bond graph.

Every atom after the first is placed from three already placed atoms: its bond
partner j, an angle partner k and a torsion reference l, by
(bond |i-j|, angle i-j-k, dihedral i-j-k-l). The atoms are placed in
breadth-first order from a root near the centre of the heavy-atom graph, heavy
atoms before hydrogens at equal depth, so torsion chains stay short.

Two kinds of torsion (docs/conventions.md, section `internal`):

* a **chain torsion**: i is the first atom placed on the pair (j, k); its
  torsion reference l is bonded to k (or to j when k has no other placed
  neighbour). These are the rotatable torsions (phi, psi, omega, methyl rotors).
* a **branch torsion**: a later substituent i of the same pair (j, k) takes the
  first one, s, as reference: dihedral(i, j, k, s) is the nearly rigid
  +-120 deg (sp3) or 180 deg (sp2) offset between two substituents of j. At an
  sp3 stereocentre its sign is the chirality of j.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from bgkit import BgkitError

__all__ = ["ZMatrix", "build_zmatrix"]


@dataclass(frozen=True)
class ZMatrix:
    """Placement order and references of an N-atom molecule.

    order: [N] atom indices in placement order. rows: [N, 4] int (i, j, k, l), -1 where
    undefined (atom 0 has none; atom 1 only j; atom 2 j and k). branch: [N] bool, True
    where row's torsion is a branch torsion (only rows >= 3 have torsions).
    """

    order: np.ndarray
    rows: np.ndarray
    branch: np.ndarray

    @property
    def n_atoms(self) -> int:
        return int(len(self.order))

    def state_dict(self) -> dict:
        """JSON-able lists."""
        return {"rows": self.rows.tolist(), "branch": self.branch.astype(bool).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "ZMatrix":
        rows = np.asarray(d["rows"], dtype=np.int64).reshape(-1, 4)
        return cls(order=rows[:, 0].copy(), rows=rows, branch=np.asarray(d["branch"], dtype=bool))


def _neighbours(n_atoms: int, bonds: list[tuple[int, int]]) -> list[list[int]]:
    nb: list[list[int]] = [[] for _ in range(n_atoms)]
    for a, b in bonds:
        if not (0 <= a < n_atoms and 0 <= b < n_atoms) or a == b:
            raise BgkitError(f"invalid bond ({a}, {b}) for {n_atoms} atoms")
        nb[a].append(b)
        nb[b].append(a)
    return [sorted(set(x)) for x in nb]


def _distances(nb: list[list[int]], start: int) -> np.ndarray:
    dist = np.full(len(nb), -1, dtype=np.int64)
    dist[start] = 0
    queue = deque([start])
    while queue:
        a = queue.popleft()
        for b in nb[a]:
            if dist[b] < 0:
                dist[b] = dist[a] + 1
                queue.append(b)
    return dist


def build_zmatrix(n_atoms: int, bonds: list[tuple[int, int]], heavy: list[bool]) -> ZMatrix:
    """Z-matrix of a connected molecule from its bonds; heavy[a] marks non-hydrogen atoms.

    Raises BgkitError for fewer than 3 atoms, a molecule in several pieces
    (e.g. with ions or waters), or a root without two neighbours.
    """
    if n_atoms < 3:
        raise BgkitError(f"internal coordinates need at least 3 atoms, got {n_atoms}")
    nb = _neighbours(n_atoms, bonds)
    dist0 = _distances(nb, 0)
    if (dist0 < 0).any():
        raise BgkitError(f"internal coordinates need one connected molecule; atoms {np.flatnonzero(dist0 < 0)[:5].tolist()}... "
                         "are not bonded to atom 0 (use the cartesian representation for several molecules)")
    candidates = [a for a in range(n_atoms) if len(nb[a]) >= 2] or list(range(n_atoms))
    root = min(candidates, key=lambda a: (not heavy[a], int(_distances(nb, a).max()), -len(nb[a]), a))
    if len(nb[root]) < 2 and n_atoms > 2:
        raise BgkitError("internal coordinates need an atom with two bonds (a chain of at least 3 atoms)")
    depth = _distances(nb, root)
    parent = {root: -1}
    order = [root]
    queue = deque([root])
    while queue:  # BFS; at each atom, heavy children first
        a = queue.popleft()
        for b in sorted(nb[a], key=lambda x: (not heavy[x], x)):
            if b not in parent:
                parent[b] = a
                order.append(b)
                queue.append(b)
    order = sorted(order, key=lambda a: (depth[a], order.index(a)))
    placed: set[int] = set()
    first_child: dict[tuple[int, int], int] = {}
    rows, branch = [], []
    for pos, i in enumerate(order):
        j = parent[i]
        k = l = -1
        is_branch = False
        if pos >= 2:
            k = parent[j] if parent[j] >= 0 else next(x for x in order[:pos] if x in nb[j] and x != i)
        if pos >= 3:
            if (j, k) in first_child:
                l, is_branch = first_child[(j, k)], True
            else:
                refs = ([parent[k]] if parent[k] >= 0 else []) + [x for x in nb[k] if x in placed] + \
                       [x for x in nb[j] if x in placed]
                l = next((x for x in refs if x not in (i, j, k)), -1)
                if l < 0:
                    raise BgkitError(f"no torsion reference for atom {i} (bonded to {j}, angle to {k})")
        if pos >= 2 and (j, k) not in first_child:
            first_child[(j, k)] = i
        rows.append((i, j, k, l))
        branch.append(is_branch)
        placed.add(i)
    rows_arr = np.asarray(rows, dtype=np.int64)
    return ZMatrix(order=rows_arr[:, 0].copy(), rows=rows_arr, branch=np.asarray(branch, dtype=bool))


def zmatrix_of_topology(topology) -> ZMatrix:
    """Z-matrix of an OpenMM topology (bonds and elements)."""
    atoms = list(topology.atoms())
    heavy = [a.element is None or a.element.symbol != "H" for a in atoms]
    bonds = [(a.index, b.index) for a, b in topology.bonds()]
    return build_zmatrix(len(atoms), bonds, heavy)
