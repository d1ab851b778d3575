r"""
Add a new method (a variant) to the pipeline
============================================

Every method of the tables is a *variant*: a name in the registry :mod:`unroll3d.variants`
saying how it reconstructs (``kind``), whether it trains on patches (``partition``), whether its
data step uses the fitted H (``use_H``) and whether it has weights (``learned``). A new kind of
method also needs a *builder* in :data:`unroll3d.models.BUILDERS`, which turns the config into a
``deepinv.models.Reconstructor``. The training and evaluation engine
(:mod:`unroll3d.engine`) then handles it like the paper's variants: seeded patch draws,
checkpoints, model files, metrics and the evaluation JSON that the report reads.

This example adds a *learned Landweber* method: K gradient steps
:math:`x \leftarrow x - \eta_k A^\top(Ax - y)` whose step sizes :math:`\eta_k` are learned on
patches through the partitioned problem. It registers it, builds a pipeline config that names
it, trains it with :class:`unroll3d.engine.train.TrainJob` and evaluates it with
:func:`unroll3d.engine.evaluate.evaluate_volume`, on a small masked-blur problem whose
loader stands in for ``unroll3d.data.loading.load_sample``.

To run the variant through the Snakemake workflow (``unroll3d train``/``evaluate`` jobs and
the tables) without editing the package, put sections 1 and 2 (the class, the builder and the
:func:`~unroll3d.variants.register` call) in a file of your own, say ``my_methods.py`` in the
folder you run Snakemake from, and name it in your config::

    plugins: [my_methods.py]   # or a module name Python can import: [my_methods]
    variants: [fdk, partition-H, learned-landweber]

Config validation imports the plugins before it checks ``variants:``, and the train, evaluate
and report jobs of the variant import them too (:mod:`unroll3d.plugins`).

Runs on the CPU in a few seconds.
"""

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from deepinv.models import Reconstructor
from deepinv.physics import LinearPhysics

from unroll3d import models, variants
from unroll3d.config import validate
from unroll3d.data.sample import Sample
from unroll3d.engine.evaluate import evaluate_volume
from unroll3d.engine.train import TrainJob, train
from unroll3d.physics import initial_reconstruction, sqnorm

torch.manual_seed(0)

# %%
# 1. The method
# -------------
# A ``Reconstructor`` with the engine's calling convention ``model(y, physics, x_init=x0)``;
# without ``x_init`` it starts from :func:`unroll3d.physics.initial_reconstruction` (the
# operator's own cheap estimate, else deepinv's least-squares ``A_dagger``).
# Two attributes let the engine drive it: a ``lipschitz`` buffer (‖A‖², refreshed per sample)
# and ``set_tiling`` (partitioned variants run their network patch by patch at test time; this
# method has no network, so it ignores it).


class LearnedLandweber(Reconstructor):
    def __init__(self, K: int, lipschitz: float):
        super().__init__()
        self.register_buffer("lipschitz", torch.tensor(float(lipschitz)))
        self.step_raw = torch.nn.Parameter(torch.zeros(K))  # η_k = softplus(raw_k) / ‖A‖²

    def set_tiling(self, tiler, stride=None):
        return self

    def forward(self, y, physics, x_init=None, **kwargs):
        x = initial_reconstruction(physics, y) if x_init is None else x_init
        aty = physics.A_adjoint(y)
        for eta in F.softplus(self.step_raw) / self.lipschitz:
            x = x - eta * (physics.A_adjoint_A(x) - aty)
        return x


# %%
# 2. Register the variant and its builder
# ---------------------------------------
# The builder gets a :class:`unroll3d.models.BuildContext`: the task's config section (here its
# ``K``), the model and training sections, and ‖A‖².

models.BUILDERS["landweber"] = lambda c: LearnedLandweber(int(c.task_config["K"]), c.lipschitz)
variants.register(
    variants.VariantSpec(
        name="learned-landweber",
        kind="landweber",
        partition=True,  # trained on random patches of the exact patch problem
        use_H=False,
        learned=True,
        gpu=False,
        label={"cbct": "Learned Landweber (partitioned)"},
        short={"cbct": "Landweber"},
    )
)

# %%
# 3. The config
# -------------
# The pipeline config names the variant; :func:`unroll3d.config.validate` fills every default
# from the schema and checks the names against the registry. The task fixes the image channels
# and the metric convention: this 1-channel problem runs as ``cbct``, without the Walnut crop.
# Every top-level section must be present; an empty one takes all its defaults.

config = validate(
    {
        "name": "example",
        "seed": 0,
        "tasks": ["cbct"],
        "variants": ["learned-landweber"],
        "cbct": {"K": 8, "patch_size": [8, 8, 8]},
        "train": {"steps": 40, "lr": 0.05, "lr_min": 0.001, "warmup_steps": 2},
        "evaluate": {"cbct_crop": None, "cbct_data_range": 1.0, "timing_steps": 0},
        "mri": {},
        "model": {},
        "normal": {},
        "benchmarks": {},
    }
)
print(f"config validated; variants: {config['variants']}")

# %%
# 4. Data: a loader returning ``Sample(x, y, physics, meta)``
# -----------------------------------------------------------
# The engine asks a loader for each volume name. Here: a 3D blur followed by a random mask,
# on a 16³ volume of smooth noise. ``initial_reconstruction`` is the cheap first estimate
# ``Aᵀy / ‖A‖²`` that the engine starts every method from (``A_dagger`` stays deepinv's
# least-squares pseudo-inverse).


class MaskedBlur(LinearPhysics):
    def __init__(self, n, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("kernel", torch.ones(1, 1, 3, 3, 3) / 27)
        self.register_buffer("mask", (torch.rand(1, 1, n, n, n, generator=g) < 0.6).float())
        self.norm_sq = 1.0

    def A(self, x, **kwargs):
        return self.mask * F.conv3d(x, self.kernel, padding=1)

    def A_adjoint(self, y, **kwargs):
        return F.conv_transpose3d(self.mask * y, self.kernel, padding=1)

    def initial_reconstruction(self, y, **kwargs):
        return self.A_adjoint(y) / self.norm_sq


def load(name: str) -> Sample:
    seed = int(name.removeprefix("vol"))
    n = 16
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool3d(torch.rand(1, 1, n, n, n, generator=g), 5, stride=1, padding=2)
    physics = MaskedBlur(n, seed)
    physics.norm_sq = sqnorm(physics, img_size=(1, n, n, n), max_iter=300)
    y = physics.A(x) + 0.002 * torch.randn(x.shape, generator=g)
    meta = {"volume": name, "setting": "v30", "op_norm_sq": physics.norm_sq}
    return Sample(x=x, y=y, physics=physics, meta=meta)


# %%
# 5. Train and evaluate through the engine
# ----------------------------------------
# ``train`` writes the model file, a per-step CSV and a JSON of statistics; ``evaluate_volume``
# rebuilds the model from its file (through the builder) and returns the evaluation record,
# with the PSNR of the method and of its initial estimate ``x0``.

with tempfile.TemporaryDirectory() as tmp:
    job = TrainJob(
        task="cbct",
        setting="v30",
        variant="learned-landweber",
        config=config,
        train_paths=["vol0", "vol1", "vol2"],
        val_paths=[],
        out=Path(tmp) / "learned-landweber.pt",
        loader=load,
        progress=False,
    )
    stats = train(job)
    test = load("vol7")
    result = evaluate_volume(
        "cbct", "v30", "learned-landweber", config, job.out, test, "vol7", torch.device("cpu")
    )
    learned = torch.load(job.out, weights_only=False)["state_dict"]["step_raw"]

# %%
# 6. What training changed
# ------------------------
# The step sizes start at softplus(0) / ‖A‖² ≈ 0.69 / ‖A‖²; the same method with those initial
# steps, on the same test volume, shows what the 40 training steps bought (PSNR with the data
# range 1 of the config, as the evaluation computes it).

untrained = LearnedLandweber(K=8, lipschitz=test.meta["op_norm_sq"])
with torch.no_grad():
    x_untrained = untrained(test.y, test.physics)
psnr_untrained = float(-10 * torch.log10(torch.mean((x_untrained - test.x) ** 2)))

print(
    f"training: {stats['steps']} steps, loss {stats['loss_first']:.3g} -> {stats['loss_last']:.3g}"
)
print(f"learned step sizes × ‖A‖²: {[round(v, 2) for v in F.softplus(learned).tolist()]}")
print(f"untrained (initial step sizes) on the held-out volume: PSNR {psnr_untrained:.2f} dB")
print(
    f"evaluation on a held-out volume: PSNR {result['psnr']:.2f} dB "
    f"(x0: {result['psnr_x0']:.2f} dB), status {result['status']}"
)
