"""The force-field source of a system: OpenMM force-field XMLs applied to the topology PDB.

Force-field entries of ``system.yaml`` are files relative to the system folder, else names of
OpenMM's bundled force fields.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bgkit import BgkitError
from bgkit.systems.files import PdbTopology, one_line_error

__all__ = ["ForceFieldSource", "forcefield_files", "load_forcefield"]


def forcefield_files(spec: Any, folder: Path) -> list[str]:
    """Force-field XMLs of ``spec``, resolved: a file in ``folder``, else an OpenMM bundled name."""
    files = []
    for entry in spec.forcefield:
        local = Path(folder) / entry
        files.append(str(local) if local.is_file() else entry)
    return files


def load_forcefield(spec: Any, folder: Path) -> Any:
    """The ``openmm.app.ForceField`` of ``spec`` (BgkitError for an unknown or unreadable file)."""
    from openmm import app

    files = forcefield_files(spec, folder)
    try:
        return app.ForceField(*files)
    except ValueError as exc:  # "Could not locate file ..."
        raise BgkitError(f"system '{spec.name}': unknown force-field file: {one_line_error(exc)}") from None
    except Exception as exc:
        raise BgkitError(f"system '{spec.name}': cannot read force field {files}: {one_line_error(exc)}") from None


class ForceFieldSource(PdbTopology):
    """Force-field XMLs + topology PDB: ``openmm_system()`` built by ``ForceField.createSystem``."""

    def openmm_system(self) -> Any:
        """A fresh ``openmm.System`` with the nonbonded method, cutoff and constraints of system.yaml."""
        from openmm import app, unit

        spec = self.spec
        kwargs: dict[str, Any] = {
            "nonbondedMethod": getattr(app, spec.nonbonded_method),
            "constraints": getattr(app, spec.constraints) if spec.constraints else None,
            "rigidWater": False,
            "removeCMMotion": False,
        }
        if spec.nonbonded_cutoff_nm is not None:
            kwargs["nonbondedCutoff"] = spec.nonbonded_cutoff_nm * unit.nanometer
        try:
            return load_forcefield(spec, self.folder).createSystem(self.openmm_topology, **kwargs)
        except BgkitError:
            raise
        except Exception as exc:
            raise BgkitError(f"system '{spec.name}': force field does not match topology: {one_line_error(exc)}") from None

    @property
    def forcefield_names(self) -> list[str]:
        """The force-field XMLs, as system.yaml names them."""
        return list(self.spec.forcefield)

    def definition_entries(self) -> list[str]:
        """The force-field entries that are files of the system folder (bundled names are not)."""
        return [e for e in self.spec.forcefield if (self.folder / e).is_file()]
