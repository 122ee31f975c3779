"""A1111's DDIM, PLMS, UniPC and LCM samplers (engine/timestep_samplers.py, engine/lcm_a1111.py) against
torch references written here from A1111's modules/sd_samplers_timesteps_impl.py, sd_samplers_lcm.py,
sd_samplers_cfg_denoiser.py and models/diffusion/uni_pc/uni_pc.py, with the same torch ops and dtypes.

Both sides drive the tiny SD1.5 (or LCM) fixture UNet with fixed random conditioning, CFG 7, batch 2; the
references do CFG as A1111's CFGDenoiser does, the numpy side through a CFG-combined eps_model.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sdcpu.engine.discrete_sigmas import a1111_alphas_cumprod  # noqa: E402
from sdcpu.engine.lcm_a1111 import lcm_denoiser, lcm_sigmas, lcm_timestep, lcm_training_sigmas, sample_lcm  # noqa: E402
from sdcpu.engine.schedules import training_alphas_cumprod  # noqa: E402
from sdcpu.engine.timestep_samplers import (  # noqa: E402
    a1111_img2img_timesteps,
    a1111_noised_latent,
    a1111_timesteps,
    sample_ddim,
    sample_plms,
    sample_unipc,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
BATCH, CFG_SCALE, SHAPE = 2, 7.0, (2, 4, 8, 8)
TOLERANCE = 5e-6


# ---- A1111's model side, in torch -------------------------------------------------------------------------

def ldm_alphas_cumprod() -> "torch.Tensor":
    """ldm's register_schedule('linear'): float64 betas and cumprod, stored as a float32 buffer."""
    betas = torch.linspace(CONFIG["beta_start"] ** 0.5, CONFIG["beta_end"] ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.tensor(np.cumprod(1.0 - betas.numpy(), axis=0), dtype=torch.float32)


def cfg_denoiser(inner, cond, uncond):
    """CFGDenoiser.forward for one prompt per image: [conds..., unconds] in one call, then combine_denoised."""
    def forward(x, sigma):
        out = inner(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, uncond]))
        uncond_out = out[-BATCH:]
        denoised = torch.clone(uncond_out)
        for i in range(BATCH):
            denoised[i] += (out[i] - uncond_out[i]) * (1.0 * CFG_SCALE)
        return denoised
    return forward


def numpy_eps_model(unet, cond, uncond):
    """The runtime's view: eps_model(x, t) -> CFG-combined eps, numpy in and out."""
    def eps(x, t):
        x_in = torch.from_numpy(np.concatenate([x, x]))
        with torch.no_grad():
            out = unet(x_in, torch.full((2 * BATCH,), t), torch.cat([cond, uncond])).sample.numpy()
        return out[-BATCH:] + (out[:BATCH] - out[-BATCH:]) * np.float32(CFG_SCALE)
    return eps


def apply_model(unet):
    def inner(x, t, c):
        with torch.no_grad():
            return unet(x, t, encoder_hidden_states=c).sample
    return inner


# ---- DDIM / PLMS as sd_samplers_timesteps_impl runs them --------------------------------------------------

def _a1111_alphas(alphas_cumprod, timesteps):
    current = alphas_cumprod[timesteps]
    previous = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    return current, previous, torch.sqrt(1 - current)


def ddim_reference(model, x, timesteps, alphas_cumprod, draw, eta=0.0):
    alphas, alphas_prev, sqrt_one_minus = _a1111_alphas(alphas_cumprod, timesteps)
    sigmas = eta * np.sqrt((1 - alphas_prev.numpy()) / (1 - alphas) * (1 - alphas / alphas_prev.numpy()))
    per_image, per_pixel = x.new_ones((BATCH,)), x.new_ones((BATCH, 1, 1, 1))
    for step in range(len(timesteps) - 1):
        k = len(timesteps) - 1 - step
        e_t = model(x, timesteps[k].item() * per_image)
        a_t, a_prev = alphas[k].item() * per_pixel, alphas_prev[k].item() * per_pixel
        sigma_t, root = sigmas[k].item() * per_pixel, sqrt_one_minus[k].item() * per_pixel
        pred_x0 = (x - root * e_t) / a_t.sqrt()
        x = a_prev.sqrt() * pred_x0 + (1. - a_prev - sigma_t ** 2).sqrt() * e_t + sigma_t * draw()
    return x


def plms_reference(model, x, timesteps, alphas_cumprod):
    alphas, alphas_prev, sqrt_one_minus = _a1111_alphas(alphas_cumprod, timesteps)
    per_image, per_pixel = x.new_ones((BATCH,)), x.new_ones((BATCH, 1, 1, 1))
    history = []

    def move(x, e_t, k):
        a_t, a_prev = alphas[k].item() * per_pixel, alphas_prev[k].item() * per_pixel
        pred_x0 = (x - sqrt_one_minus[k].item() * per_pixel * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1. - a_prev).sqrt() * e_t

    for step in range(len(timesteps) - 1):
        k = len(timesteps) - 1 - step
        e_t = model(x, timesteps[k].item() * per_image)
        if not history:
            e_next = model(move(x, e_t, k), timesteps[max(k - 1, 0)].item() * per_image)
            e_prime = (e_t + e_next) / 2
        elif len(history) == 1:
            e_prime = (3 * e_t - history[-1]) / 2
        elif len(history) == 2:
            e_prime = (23 * e_t - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        x = move(x, e_prime, k)
        history = (history + [e_t])[-3:]
    return x


# ---- UniPC (bh variants, multistep, data prediction) as uni_pc.py runs it ---------------------------------

class TorchVP:
    """NoiseScheduleVP('discrete') with uni_pc's sort-based interpolate_fn."""

    def __init__(self, alphas_cumprod):
        self.n = len(alphas_cumprod)
        self.ts = torch.linspace(0., 1., self.n + 1)[1:].reshape((1, -1))
        self.log_alphas = (0.5 * torch.log(alphas_cumprod)).reshape((1, -1))

    def log_alpha(self, t):
        x, k = t.reshape((-1, 1)), self.n
        merged = torch.cat([x.unsqueeze(2), self.ts.unsqueeze(0).repeat((x.shape[0], 1, 1))], dim=2)
        landed = torch.argmin(torch.sort(merged, dim=2)[1], dim=2)
        seg = (landed - 1).clamp(0, k - 2)
        x0, x1 = self.ts[0][seg], self.ts[0][seg + 1]
        y0, y1 = self.log_alphas[0][seg], self.log_alphas[0][seg + 1]
        return (y0 + (x - x0) * (y1 - y0) / (x1 - x0)).reshape((-1))

    def std(self, t):
        return torch.sqrt(1. - torch.exp(2. * self.log_alpha(t)))

    def lam(self, t):
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(1. - torch.exp(2. * la))


def unipc_reference(model, x, steps, alphas_cumprod, t_start=None, order=3, variant="bh1"):
    vp = TorchVP(alphas_cumprod)
    four_d = (slice(None), None, None, None)

    def data(x, t):
        eps = model(x, (t - 1. / vp.n) * 1000.)
        return (x - vp.std(t)[four_d] * eps) / torch.exp(vp.log_alpha(t))[four_d]

    def update(x, models, times, t, order, use_corrector):
        lam_0, h = vp.lam(times[-1]), vp.lam(t) - vp.lam(times[-1])
        rks, d1s = [], []
        for i in range(1, order):
            rk = ((vp.lam(times[-(i + 1)]) - lam_0) / h)[0]
            rks.append(rk)
            d1s.append((models[-(i + 1)] - models[-1]) / rk)
        rks = torch.tensor(rks + [1.])
        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k, factorial, b_h = h_phi_1 / hh - 1, 1, hh if variant == "bh1" else torch.expm1(hh)
        rows, b = [], []
        for i in range(1, order + 1):
            rows.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r, b = torch.stack(rows), torch.tensor(b)
        alpha_t = torch.exp(vp.log_alpha(t))
        base = (vp.std(t) / vp.std(times[-1]))[four_d] * x - (alpha_t * h_phi_1)[four_d] * models[-1]
        if d1s:
            d1s = torch.stack(d1s, dim=1)
            rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r[:-1, :-1], b[:-1])
            x_t = base - (alpha_t * b_h)[four_d] * torch.einsum("k,bkchw->bchw", rhos_p, d1s)
        else:
            x_t = base
        if not use_corrector:
            return x_t, None
        rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r, b)
        model_t = data(x_t, t)
        corr = torch.einsum("k,bkchw->bchw", rhos_c[:-1], d1s) if len(rks) > 1 else 0
        return base - (alpha_t * b_h)[four_d] * (corr + rhos_c[-1] * (model_t - models[-1])), model_t

    grid = torch.linspace(1. if t_start is None else t_start, 1. / vp.n, steps + 1)
    times = [grid[0].expand(BATCH)]
    models = [data(x, times[0])]
    for step in range(1, steps + 1):
        t = grid[step].expand(BATCH)
        step_order = min(step, order) if step < order else min(order, steps + 1 - step)
        x, model_x = update(x, models, times, t, step_order, use_corrector=step < steps)
        models, times = (models + [model_x])[-order:], (times + [t])[-order:]
    return x


# ---- LCM as sd_samplers_lcm runs it (LCMCompVisDenoiser over k-diffusion's DiscreteSchedule) --------------

class TorchLCM:
    def __init__(self, unet, alphas_cumprod):
        self.unet, self.skip = unet, 20
        kept = torch.zeros(50, dtype=torch.float32)
        for j in range(50):
            kept[49 - j] = alphas_cumprod[999 - j * self.skip]
        self.sigmas = ((1 - kept) / kept) ** 0.5
        self.log_sigmas = self.sigmas.log()

    def sigma_to_t(self, sigma):
        dists = sigma.log() - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape) * self.skip + (self.skip - 1)

    def t_to_sigma(self, t):
        t = torch.clamp(((t - (self.skip - 1)) / self.skip).float(), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def get_sigmas(self, n):
        t = torch.linspace(self.sigma_to_t(self.sigmas[-1]), self.sigma_to_t(self.sigmas[0]), n)
        return torch.cat([self.t_to_sigma(t), torch.zeros(1)])

    def __call__(self, x, sigma, cond):
        c_out, c_in = -sigma[:, None, None, None], 1 / (sigma[:, None, None, None] ** 2 + 1.) ** 0.5
        with torch.no_grad():
            eps = self.unet(x * c_in, self.sigma_to_t(sigma), encoder_hidden_states=cond).sample
        scaled = self.sigma_to_t(sigma)[:, None, None, None] * 10.0
        c_skip, c_out_lcm = 0.5 ** 2 / (scaled ** 2 + 0.5 ** 2), scaled / (scaled ** 2 + 0.5 ** 2) ** 0.5
        return c_out_lcm * (x + eps * c_out) + c_skip * x


def lcm_reference(model, x, sigmas, draw):
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i] * x.new_ones([BATCH]))
        if sigmas[i + 1] > 0:
            x += sigmas[i + 1] * draw()
    return x


# ---- fixtures and helpers ---------------------------------------------------------------------------------

def _unet(folder):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder / "unet").eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny UNet gains nothing from threads; one avoids OpenMP spinning on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def conditioning():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(BATCH, 77, 32, generator=generator), torch.randn(BATCH, 77, 32, generator=generator)


@pytest.fixture(scope="module")
def sd15(tiny_sources, conditioning):
    unet = _unet(tiny_sources["sd15"])
    return cfg_denoiser(apply_model(unet), *conditioning), numpy_eps_model(unet, *conditioning)


def _noise(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(count)]


def _draws(arrays):
    """The same noise stream for both sides: torch tensors for the reference, numpy arrays for the runtime."""
    stream = iter(arrays)
    return lambda: next(stream)


def _close(ours: np.ndarray, reference) -> None:
    reference = reference.numpy() if hasattr(reference, "numpy") else reference
    assert ours.dtype == np.float32 and ours.shape == SHAPE
    assert np.abs(ours - reference).max() < TOLERANCE * max(1.0, np.abs(reference).max())


# ---- schedules and golden values --------------------------------------------------------------------------

def test_timesteps_golden():
    assert a1111_timesteps(10).tolist() == list(range(1, 1000, 100))
    assert a1111_timesteps(20).tolist() == list(range(1, 1000, 50))
    assert a1111_timesteps(7).tolist() == [1, 143, 285, 427, 569, 711, 853, 995]
    assert a1111_timesteps(20, discard_next_to_last_sigma=True).tolist() == list(range(1, 989, 47))
    assert a1111_timesteps(30).tolist() == list(range(1, 1000, 33))


def test_img2img_timesteps_golden():
    timesteps, noised_at = a1111_img2img_timesteps(20, 0.75)
    assert timesteps.tolist() == list(range(1, 702, 50)) and noised_at == 751
    timesteps, noised_at = a1111_img2img_timesteps(20, 0.5, fix_steps=True)
    assert timesteps.tolist() == list(range(1, 452, 25)) and noised_at == 476


def test_alphas_cumprod_is_ldm_float32_buffer():
    ours, ldm = a1111_alphas_cumprod(CONFIG), ldm_alphas_cumprod().numpy()
    assert ours.dtype == np.float32 and np.array_equal(ours, ldm)
    assert np.abs(ours / training_alphas_cumprod(CONFIG) - 1).max() < 3e-6


def test_lcm_sigmas_golden():
    alphas_cumprod = a1111_alphas_cumprod(CONFIG)
    training = lcm_training_sigmas(alphas_cumprod)
    sigmas = lcm_sigmas(4, alphas_cumprod)
    assert [lcm_timestep(s, training) for s in sigmas[:-1]] == [999, 679, 339, 19]
    np.testing.assert_allclose(sigmas, [14.614643, 2.991056, 0.9728259, 0.13445057, 0.0], rtol=1e-6)
    reference = TorchLCM(None, torch.from_numpy(alphas_cumprod))
    for steps in (1, 4, 8):
        np.testing.assert_allclose(lcm_sigmas(steps, alphas_cumprod), reference.get_sigmas(steps), rtol=1e-6)
    assert len(lcm_sigmas(4, alphas_cumprod, discard_next_to_last_sigma=True)) == 5


# ---- samplers against the references ----------------------------------------------------------------------

def test_ddim_matches_a1111(sd15):
    reference_model, eps_model = sd15
    alphas_cumprod, x = a1111_alphas_cumprod(CONFIG), _noise(0, 1)[0]
    timesteps, calls = a1111_timesteps(20), []
    ours = sample_ddim(eps_model, x, timesteps, alphas_cumprod, callback=lambda i, n, *_: calls.append((i, n)))
    zeros = _draws([torch.zeros(SHAPE)] * 20)
    expected = ddim_reference(reference_model, torch.from_numpy(x), torch.from_numpy(timesteps),
                              torch.from_numpy(alphas_cumprod), zeros)
    _close(ours, expected)
    assert calls == [(i, 19) for i in range(19)]


def test_ddim_eta_draws_noise_like_a1111(sd15):
    reference_model, eps_model = sd15
    alphas_cumprod, (x, *noise) = a1111_alphas_cumprod(CONFIG), _noise(1, 7)
    timesteps = a1111_timesteps(6)
    ours = sample_ddim(eps_model, x, timesteps, alphas_cumprod, noise=_draws(noise), eta=0.7)
    expected = ddim_reference(reference_model, torch.from_numpy(x), torch.from_numpy(timesteps),
                              torch.from_numpy(alphas_cumprod), _draws([torch.from_numpy(n) for n in noise]), eta=0.7)
    _close(ours, expected)
    without_noise = sample_ddim(eps_model, x, timesteps, alphas_cumprod, noise=_draws([0 * n for n in noise]), eta=0.7)
    assert np.abs(ours - without_noise).max() > 1e-2
    with pytest.raises(ValueError):
        sample_ddim(eps_model, x, timesteps, alphas_cumprod, eta=0.7)


def test_ddim_img2img_matches_a1111(sd15):
    reference_model, eps_model = sd15
    alphas_cumprod, (init, noise) = a1111_alphas_cumprod(CONFIG), _noise(2, 2)
    timesteps, noised_at = a1111_img2img_timesteps(10, 0.6)
    ac = torch.from_numpy(alphas_cumprod)
    start = torch.from_numpy(init) * torch.sqrt(ac[noised_at]) + torch.from_numpy(noise) * torch.sqrt(1 - ac[noised_at])
    x = a1111_noised_latent(init, noise, noised_at, alphas_cumprod)
    np.testing.assert_array_equal(x, start.numpy())
    ours = sample_ddim(eps_model, x, timesteps, alphas_cumprod)
    zeros = _draws([torch.zeros(SHAPE)] * 10)
    _close(ours, ddim_reference(reference_model, start, torch.from_numpy(timesteps), ac, zeros))


def test_plms_matches_a1111(sd15):
    reference_model, eps_model = sd15
    alphas_cumprod, x = a1111_alphas_cumprod(CONFIG), _noise(3, 1)[0]
    timesteps, calls = a1111_timesteps(10), []

    def counted(x, t):
        calls.append(t)
        return eps_model(x, t)

    ours = sample_plms(counted, x, timesteps, alphas_cumprod)
    expected = plms_reference(reference_model, torch.from_numpy(x), torch.from_numpy(timesteps),
                              torch.from_numpy(alphas_cumprod))
    _close(ours, expected)
    assert calls[:3] == [901.0, 801.0, 801.0] and len(calls) == 10


@pytest.mark.parametrize("steps, img2img", [(10, False), (6, True)])
def test_unipc_matches_a1111(sd15, steps, img2img):
    reference_model, eps_model = sd15
    alphas_cumprod, x = a1111_alphas_cumprod(CONFIG), _noise(4, 1)[0]
    timesteps = a1111_img2img_timesteps(steps, 0.5)[0] if img2img else a1111_timesteps(steps)
    calls = []
    ours = sample_unipc(eps_model, x, timesteps, alphas_cumprod, is_img2img=img2img,
                        callback=lambda i, n, *_: calls.append((i, n)))
    ac = torch.from_numpy(alphas_cumprod)
    t_start = torch.from_numpy(timesteps)[-1] / 1000 + 1 / 1000 if img2img else None
    expected = unipc_reference(reference_model, torch.from_numpy(x), len(timesteps), ac, t_start=t_start)
    _close(ours, expected)
    assert calls == [(i, len(timesteps)) for i in range(len(timesteps))]


def test_unipc_bh2_matches_a1111(sd15):
    reference_model, eps_model = sd15
    alphas_cumprod, x = a1111_alphas_cumprod(CONFIG), _noise(5, 1)[0]
    timesteps = a1111_timesteps(5)
    ours = sample_unipc(eps_model, x, timesteps, alphas_cumprod, variant="bh2", order=2)
    expected = unipc_reference(reference_model, torch.from_numpy(x), 5, torch.from_numpy(alphas_cumprod),
                               order=2, variant="bh2")
    _close(ours, expected)
    with pytest.raises(ValueError):
        sample_unipc(eps_model, x, timesteps[:2], alphas_cumprod)


def test_lcm_matches_a1111(tiny_sources, conditioning):
    unet = _unet(tiny_sources["lcm"])
    alphas_cumprod = a1111_alphas_cumprod(CONFIG)
    sigmas = lcm_sigmas(4, alphas_cumprod)
    x0, *noise = _noise(6, 4)
    x = x0 * sigmas[0]
    seen = []
    ours = sample_lcm(lcm_denoiser(numpy_eps_model(unet, *conditioning), alphas_cumprod), x, sigmas,
                      noise=_draws(noise), callback=lambda i, n, x, denoised: seen.append((i, n, x)))
    reference = cfg_denoiser(TorchLCM(unet, torch.from_numpy(alphas_cumprod)), *conditioning)
    torch_sigmas = torch.from_numpy(sigmas)
    expected = lcm_reference(reference, torch.from_numpy(x0) * torch_sigmas[0], torch_sigmas,
                             _draws([torch.from_numpy(n) for n in noise]))
    _close(ours, expected)
    assert [(i, n) for i, n, _ in seen] == [(i, 4) for i in range(4)] and seen[-1][2] is ours
    with pytest.raises(ValueError):
        sample_lcm(lcm_denoiser(numpy_eps_model(unet, *conditioning), alphas_cumprod), x, sigmas)
