"""A generative model of a phenomic screen on real molecules (documented in docs/science.md).

Pipeline, all deterministic from ``SimConfig.seed``:

1. **Structure -> mechanism.**  ``n_prototypes`` molecules are drawn as prototypes; every prototype
   gets a mechanism label (``p_null_prototype`` of them the null "no phenotype" mechanism 0, the rest
   one of ``n_mechanisms`` active mechanisms).  Each molecule inherits the label of its most
   Tanimoto-similar prototype; with probability ``label_noise`` it gets a uniformly random label
   instead.  Structurally similar molecules therefore share mechanisms, and a mechanism spans
   several unrelated chemotypes (so it is learnable across scaffolds but not trivially).
2. **Structure -> molecule specifics.**  A fixed random projection of the fingerprint
   (``s_i = fp_i G / sqrt(|fp_i|)``) gives a smooth structure code; the molecule's phenotype
   direction is its mechanism direction plus ``sar_direction`` x that code plus
   ``idio_direction`` x unpredictable noise; log10 EC50 = mechanism potency + structure term +
   noise; efficacy and Hill slope per molecule.
3. **Dose response.**  Hill equation ``f(c) = c^h / (c^h + EC50^h)``; additionally every molecule has
   a cytotoxicity threshold TC50 and a shared toxicity direction with its own Hill curve, so high
   doses of many molecules converge towards one "sick cell" phenotype (concentration matters).
4. **Wells and plates.**  ``n_replicates`` replicates of every (molecule, dose), replicate r on
   its own set of plates (random layout), ``n_controls`` DMSO wells on every plate.  Latent cell
   state ``z = m_p * (phi + noise) + a_p + a_b`` with plate multiplicative ``m_p``, plate additive
   ``a_p`` and experimental-batch additive ``a_b`` effects, biological noise per well.
5. **Frozen encoder.**  A fixed random 2-layer network maps the ``latent_dim`` latent state to
   ``profile_dim`` features and adds isotropic "imaging" noise; then every plate is centred on the
   mean of its DMSO wells (as real pipelines do).  Residual batch effects survive this
   (multiplicative and non-linear).
6. **Activity labels, the paper's way.**  For each (molecule, dose) the mean pairwise cosine
   similarity of its replicate profiles is compared with a null of random triples of compound wells
   from different molecules; p-value = (1 + #null >= observed) / (1 + n_null), active if
   p < ``active_p``.  Ground truth never enters the labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .molecules import MoleculeSet


@dataclass
class SimConfig:
    seed: int = 0
    doses_um: tuple = (0.1, 0.3, 1.0, 3.0, 10.0)
    n_replicates: int = 3
    n_mechanisms: int = 40
    n_prototypes: int = 600
    p_null_prototype: float = 0.55
    label_noise: float = 0.10
    latent_dim: int = 64
    profile_dim: int = 384
    encoder_hidden: int = 512
    # molecule effects
    sar_direction: float = 0.6
    idio_direction: float = 0.5
    mech_log_ec50_mean: float = 0.3
    mech_log_ec50_sd: float = 0.5
    sar_log_ec50: float = 0.4
    idio_log_ec50: float = 0.5
    efficacy_log_sd: float = 0.35
    mech_efficacy: tuple = (1.5, 4.0)
    hill_range: tuple = (0.8, 2.5)
    tox_log_tc50_mean: float = 1.6
    tox_log_tc50_sd: float = 0.5
    tox_efficacy: float = 3.0
    # noise and batch effects
    bio_noise: float = 1.0
    imaging_noise: float = 0.3
    plate_additive: float = 0.5
    batch_additive: float = 0.5
    plate_multiplicative: float = 0.15
    wells_per_plate: int = 384
    n_controls: int = 32
    plates_per_batch: int = 16
    # activity calling
    active_p: float = 0.01
    n_null: int = 20000
    # optional subsampling (for the CI test): keep this many molecules (0 = all)
    n_molecules: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Screen:
    """A simulated screen.  Pair k = (molecule pair_mol[k], dose index pair_dose[k])."""

    config: SimConfig
    mol_index: np.ndarray  # [n_mol] row into the MoleculeSet
    fingerprints: np.ndarray  # uint8 [n_mol, 2048]
    scaffolds: np.ndarray  # str [n_mol]
    mechanism: np.ndarray  # int [n_mol] ground truth, 0 = null
    pair_mol: np.ndarray  # int [n_pair]
    pair_dose: np.ndarray  # int [n_pair]
    profiles: np.ndarray  # float32 [n_pair, n_rep, D] plate-normalised profiles of the replicate wells
    well_plate: np.ndarray  # int [n_pair, n_rep]
    controls: np.ndarray  # float32 [n_ctrl, D] plate-normalised DMSO wells
    replicate_similarity: np.ndarray  # [n_pair] mean pairwise cosine of replicates
    p_value: np.ndarray  # [n_pair]
    active: np.ndarray  # bool [n_pair] called active from replicates
    true_signal: np.ndarray = field(repr=False, default=None)  # [n_pair] ||phi||, for reporting only
    plate_ctrl_mean: np.ndarray = field(repr=False, default=None)  # float64 [n_plates, D] DMSO mean per plate
    control_plate: np.ndarray = field(repr=False, default=None)  # int [n_ctrl] plate of each control well
    plate_batch: np.ndarray = field(repr=False, default=None)  # int [n_plates] experimental batch of each plate

    @property
    def present(self) -> np.ndarray:
        """bool [n_pair, n_rep]: every replicate well exists in a simulated screen."""
        return np.ones(self.profiles.shape[:2], bool)

    def raw_profiles(self) -> np.ndarray:
        """float32 [n_pair, n_rep, D]: the wells before plate normalisation (what an imaging pipeline
        writes; ``phenix simulate`` exports these)."""
        return (self.profiles + self.plate_ctrl_mean[self.well_plate]).astype(np.float32)

    def raw_controls(self) -> np.ndarray:
        return (self.controls + self.plate_ctrl_mean[self.control_plate]).astype(np.float32)

    @property
    def doses_um(self) -> np.ndarray:
        return np.asarray(self.config.doses_um, dtype=np.float64)

    def summary(self) -> dict:
        act = self.active
        mol_active = np.zeros(len(self.mol_index), bool)
        np.logical_or.at(mol_active, self.pair_mol, act)
        per_dose = [float(act[self.pair_dose == d].mean()) for d in range(len(self.config.doses_um))]
        return {
            "n_molecules": int(len(self.mol_index)),
            "n_pairs": int(len(act)),
            "n_wells": int(self.profiles.shape[0] * self.profiles.shape[1] + len(self.controls)),
            "n_plates": int(self.well_plate.max() + 1),
            "active_fraction_pairs": float(act.mean()),
            "active_fraction_molecules": float(mol_active.mean()),
            "active_fraction_by_dose": per_dose,
            "true_null_mechanism_fraction": float((self.mechanism == 0).mean()),
            "replicate_cosine_active_mean": float(self.replicate_similarity[act].mean()),
            "replicate_cosine_inactive_mean": float(self.replicate_similarity[~act].mean()),
            "called_active_among_true_null_pairs": float(act[self.mechanism[self.pair_mol] == 0].mean()),
        }


def _tanimoto_argmax(fp: np.ndarray, proto: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Index of the most Tanimoto-similar prototype for each fingerprint row (ties: lowest index)."""
    p = proto.astype(np.float32)
    pc = p.sum(1)
    out = np.empty(len(fp), dtype=np.int64)
    for s in range(0, len(fp), chunk):
        a = fp[s:s + chunk].astype(np.float32)
        inter = a @ p.T
        union = a.sum(1, keepdims=True) + pc[None, :] - inter
        out[s:s + chunk] = np.argmax(inter / np.maximum(union, 1.0), axis=1)
    return out


def _gelu(x):
    return 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))


def _unit(x, axis=-1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def simulate(ms: MoleculeSet, cfg: SimConfig | None = None) -> Screen:
    cfg = cfg or SimConfig()
    rng = np.random.default_rng(cfg.seed)
    n_all = len(ms)
    if cfg.n_molecules and cfg.n_molecules < n_all:
        mol_index = np.sort(rng.choice(n_all, cfg.n_molecules, replace=False))
    else:
        mol_index = np.arange(n_all)
    fp = ms.fingerprints[mol_index]
    n = len(mol_index)
    L, D = cfg.latent_dim, cfg.profile_dim
    doses = np.asarray(cfg.doses_um, dtype=np.float64)
    n_dose, n_rep = len(doses), cfg.n_replicates

    # 1. mechanisms from structure
    protos = rng.choice(n, min(cfg.n_prototypes, n), replace=False)
    proto_mech = np.where(rng.random(len(protos)) < cfg.p_null_prototype, 0,
                          rng.integers(1, cfg.n_mechanisms + 1, len(protos)))
    mech = proto_mech[_tanimoto_argmax(fp, fp[protos])]
    noisy = rng.random(n) < cfg.label_noise
    mech[noisy] = rng.integers(0, cfg.n_mechanisms + 1, noisy.sum())

    # 2. molecule specifics
    G = rng.standard_normal((fp.shape[1], L)).astype(np.float32)
    code = (fp.astype(np.float32) @ G) / np.sqrt(np.maximum(fp.sum(1, keepdims=True), 1))
    code = code / np.sqrt(L)  # ~unit norm
    g_pot = rng.standard_normal(L) / np.sqrt(L)
    mech_dir = _unit(rng.standard_normal((cfg.n_mechanisms + 1, L)))
    mech_pot = rng.normal(cfg.mech_log_ec50_mean, cfg.mech_log_ec50_sd, cfg.n_mechanisms + 1)
    mech_eff = rng.uniform(*cfg.mech_efficacy, cfg.n_mechanisms + 1)
    direction = _unit(mech_dir[mech] + cfg.sar_direction * code
                      + cfg.idio_direction * rng.standard_normal((n, L)) / np.sqrt(L))
    code_pot = code @ g_pot * np.sqrt(L)  # ~N(0,1)-ish structure term
    log_ec50 = mech_pot[mech] + cfg.sar_log_ec50 * code_pot + cfg.idio_log_ec50 * rng.standard_normal(n)
    efficacy = mech_eff[mech] * np.exp(cfg.efficacy_log_sd * rng.standard_normal(n))
    efficacy[mech == 0] = 0.0
    hill = rng.uniform(*cfg.hill_range, n)
    tox_dir = _unit(rng.standard_normal(L))
    log_tc50 = rng.normal(cfg.tox_log_tc50_mean, cfg.tox_log_tc50_sd, n)
    tox_hill = rng.uniform(*cfg.hill_range, n)

    # 3. dose response -> noiseless latent phenotype per pair
    pair_mol = np.repeat(np.arange(n), n_dose)
    pair_dose = np.tile(np.arange(n_dose), n)
    lc = np.log10(doses)[pair_dose]
    f = 1.0 / (1.0 + 10.0 ** (hill[pair_mol] * (log_ec50[pair_mol] - lc)))
    g = 1.0 / (1.0 + 10.0 ** (tox_hill[pair_mol] * (log_tc50[pair_mol] - lc)))
    phi = (efficacy[pair_mol] * f)[:, None] * direction[pair_mol] + (cfg.tox_efficacy * g)[:, None] * tox_dir
    n_pair = len(pair_mol)

    # 4. plate layout: replicate r of every pair goes to its own plates; controls on each plate
    per_plate = cfg.wells_per_plate - cfg.n_controls
    plates_per_rep = int(np.ceil(n_pair / per_plate))
    well_plate = np.empty((n_pair, n_rep), dtype=np.int64)
    for r in range(n_rep):
        order = rng.permutation(n_pair)
        well_plate[order, r] = r * plates_per_rep + np.arange(n_pair) // per_plate
    n_plates = n_rep * plates_per_rep
    plate_batch = np.arange(n_plates) // cfg.plates_per_batch
    plate_add = cfg.plate_additive * rng.standard_normal((n_plates, L)) / np.sqrt(L) * np.sqrt(L / 8)
    batch_add = cfg.batch_additive * rng.standard_normal((plate_batch.max() + 1, L)) / np.sqrt(L) * np.sqrt(L / 8)
    plate_mul = np.exp(cfg.plate_multiplicative * rng.standard_normal((n_plates, L)))

    # 5. frozen encoder: fixed random 2-layer net latent -> D, plus imaging noise
    W1 = rng.standard_normal((L, cfg.encoder_hidden)) * np.sqrt(2.0 / L)
    b1 = 0.5 * rng.standard_normal(cfg.encoder_hidden)
    W2 = rng.standard_normal((cfg.encoder_hidden, D)) * np.sqrt(1.0 / cfg.encoder_hidden)

    def encode(z, plate):
        zz = plate_mul[plate] * z + plate_add[plate] + batch_add[plate_batch[plate]]
        x = _gelu(zz @ W1 + b1) @ W2
        return (x + cfg.imaging_noise * rng.standard_normal(x.shape)).astype(np.float32)

    profiles = np.empty((n_pair, n_rep, D), dtype=np.float32)
    noise_scale = cfg.bio_noise / np.sqrt(8)  # per-latent-dim sd; ||noise|| ~ bio_noise * sqrt(L/8)
    for r in range(n_rep):
        z = phi + noise_scale * rng.standard_normal((n_pair, L))
        profiles[:, r] = encode(z, well_plate[:, r])
    ctrl_plate = np.repeat(np.arange(n_plates), cfg.n_controls)
    controls = encode(noise_scale * rng.standard_normal((len(ctrl_plate), L)), ctrl_plate)
    # plate normalisation: subtract the mean of the plate's DMSO wells
    ctrl_mean = np.zeros((n_plates, D), dtype=np.float64)
    np.add.at(ctrl_mean, ctrl_plate, controls)
    ctrl_mean /= cfg.n_controls
    controls = (controls - ctrl_mean[ctrl_plate]).astype(np.float32)
    for r in range(n_rep):
        profiles[:, r] -= ctrl_mean[well_plate[:, r]].astype(np.float32)

    # 6. activity calling from replicates only
    rep_sim, p, active = call_activity(profiles, pair_mol, cfg.active_p, cfg.n_null, rng)
    return Screen(cfg, mol_index, fp, ms.scaffolds[mol_index], mech, pair_mol, pair_dose, profiles, well_plate,
                  controls, rep_sim, p, active, np.linalg.norm(phi, axis=1), ctrl_mean, ctrl_plate, plate_batch)


def _mean_pairwise_cos(x: np.ndarray) -> np.ndarray:
    """x [n, r, D] -> mean cosine over the r(r-1)/2 replicate pairs."""
    u = x / np.linalg.norm(x, axis=-1, keepdims=True)
    gram = np.einsum("nrd,nsd->nrs", u, u)
    r = x.shape[1]
    iu = np.triu_indices(r, 1)
    return gram[:, iu[0], iu[1]].mean(1)


def call_activity(profiles, pair_mol, active_p, n_null, rng):
    """Replicate-similarity p-value against random well tuples of distinct molecules."""
    n_pair, n_rep, _ = profiles.shape
    obs = _mean_pairwise_cos(profiles)
    # null: n_rep wells from distinct molecules (and hence, almost surely, distinct plates)
    pk = rng.integers(0, n_pair, (n_null, n_rep))
    bad = np.array([len(set(pair_mol[row].tolist())) < n_rep for row in pk])
    pk = pk[~bad]
    rk = rng.integers(0, n_rep, pk.shape)
    null = np.sort(_mean_pairwise_cos(profiles[pk, rk]))
    n_ge = len(null) - np.searchsorted(null, obs, side="left")
    p = (1.0 + n_ge) / (1.0 + len(null))
    return obs.astype(np.float32), p, p < active_p


if __name__ == "__main__":
    import json
    import time

    from .molecules import load_molecules

    t = time.time()
    scr = simulate(load_molecules())
    print(json.dumps(scr.summary(), indent=1))
    print(f"simulated in {time.time() - t:.1f}s")
