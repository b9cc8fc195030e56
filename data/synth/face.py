"""Render a talking face: a face-like frame whose mouth follows a viseme trajectory.

Frames imitate LRS2's face-tracked crops (160x160, face centred): background, hair, face with sphere
shading, ears, eyes that blink, brows, nose, and a mouth drawn from five numbers per frame (lip
opening, width, rounding, teeth and tongue visibility, see :mod:`data.synth.visemes`). Each speaker
has its own skin, lip, hair and background colours and face proportions; each clip adds a small head
motion (translation, rotation, scale) and slow lighting changes. The mouth sits near a fixed point of
the frame (:data:`MOUTH_CENTRE`) so a fixed mouth box crops it, as it does on face-tracked LRS2 frames.

Shapes are soft-edged implicit curves (signed distances through a one-pixel ramp). The static head is
drawn once per speaker into a sprite and warped into each frame by the head pose with one bilinear
lookup (``torch.nn.functional.grid_sample``); the moving parts (eyes, mouth) are drawn per frame with
vectorised numpy over (frames, rows, cols), only in windows around them: a few ms per frame.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

FRAME_SIZE = 160
MOUTH_CENTRE = (80.0, 112.0)  # (x, y) in pixels of a FRAME_SIZE frame
MAX_OPENING = 12.0  # half height of the widest mouth opening, pixels

Colour = tuple[float, float, float]


@dataclass(frozen=True)
class Appearance:
    """A speaker's look. Colours are RGB in [0, 1]; lengths are pixels at FRAME_SIZE."""

    skin: Colour
    lip: Colour
    hair: Colour
    iris: Colour
    background: tuple[Colour, Colour]
    face_w: float  # half width of the face
    face_h: float  # half height of the face
    jaw: float  # 0..1, how much the lower face narrows
    mouth_w: float  # half width of the mouth at rest
    lip_upper: float  # lip thicknesses
    lip_lower: float
    mouth_y: float  # mouth centre below the face centre
    mouth_offset: tuple[float, float]  # the speaker's mouth position relative to MOUTH_CENTRE
    eye_y: float  # eye line above the face centre (positive = up)
    eye_sep: float  # half distance between the eyes
    eye_w: float
    nose_y: float  # nose tip below the face centre
    hairline: float  # hair covers the face above this (distance above the centre)
    stubble: float  # 0..1 darkening of the lower face


def random_appearance(rng: np.random.Generator) -> Appearance:
    """Draw a speaker: skin tones from light to dark, lips redder and darker than skin, varied shapes."""
    tone = rng.uniform(0.0, 1.0)
    light, dark = np.array([0.96, 0.80, 0.70]), np.array([0.36, 0.23, 0.16])
    skin = (1 - tone) * light + tone * dark + rng.normal(0, 0.02, 3)
    lip = skin * np.array([0.85, 0.55, 0.55]) + np.array([0.08, 0.0, 0.02]) * rng.uniform(0.5, 1.5)
    hair = rng.choice([[0.1, 0.07, 0.05], [0.35, 0.22, 0.12], [0.75, 0.6, 0.35], [0.55, 0.55, 0.55], [0.2, 0.2, 0.22]])
    iris = rng.choice([[0.25, 0.15, 0.08], [0.2, 0.35, 0.55], [0.3, 0.4, 0.25]])
    bg1 = rng.uniform(0.1, 0.9, 3)
    bg2 = np.clip(bg1 + rng.normal(0, 0.15, 3), 0, 1)

    def col(c: np.ndarray) -> Colour:
        return tuple(float(x) for x in np.clip(c, 0, 1))

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    mouth_y = u(31, 37)
    return Appearance(
        skin=col(skin),
        lip=col(lip),
        hair=col(hair + rng.normal(0, 0.03, 3)),
        iris=col(iris),
        background=(col(bg1), col(bg2)),
        face_w=u(44, 54),
        face_h=u(60, 68),
        jaw=u(0.1, 0.6),
        mouth_w=u(19, 24),
        lip_upper=u(3.0, 5.0),
        lip_lower=u(4.0, 6.5),
        mouth_y=mouth_y,
        mouth_offset=(u(-2, 2), u(-2, 2)),
        eye_y=u(12, 18),
        eye_sep=u(17, 22),
        eye_w=u(6, 8.5),
        nose_y=mouth_y - u(12, 16),
        hairline=u(36, 50),
        stubble=u(0.0, 0.25) if rng.random() < 0.3 else 0.0,
    )


@dataclass
class Motion:
    """Per-frame head pose and light: translation (px), rotation (rad), scale, light direction, gain,
    and eyelid closure (0 open .. 1 shut). Arrays of shape (T,)."""

    dx: np.ndarray
    dy: np.ndarray
    angle: np.ndarray
    scale: np.ndarray
    light_x: np.ndarray
    light_y: np.ndarray
    gain: np.ndarray
    blink: np.ndarray


def _smooth_noise(rng: np.random.Generator, num_frames: int, fps: float, amplitude: float, hz: float) -> np.ndarray:
    """A smooth random signal: a few sinusoids below ``hz`` with random phases, peak about ``amplitude``."""
    t = np.arange(num_frames) / fps
    out = np.zeros(num_frames)
    for _ in range(3):
        f = rng.uniform(0.1, hz)
        out += np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.3, 1.0)
    return out * amplitude / 2.0


def random_motion(rng: np.random.Generator, num_frames: int, fps: float) -> Motion:
    """Small head motion (a few pixels, a few degrees), slow lighting drift and occasional blinks."""
    blink = np.zeros(num_frames)
    t = rng.uniform(0.3, 2.5)
    while t * fps < num_frames:
        k = int(t * fps)
        for j, v in enumerate((0.6, 1.0, 0.7, 0.3)):  # a blink lasts about 4 frames at 25 fps
            if k + j < num_frames:
                blink[k + j] = max(blink[k + j], v)
        t += rng.uniform(2.0, 5.0)
    return Motion(
        dx=_smooth_noise(rng, num_frames, fps, 3.0, 0.8),
        dy=_smooth_noise(rng, num_frames, fps, 2.5, 0.8),
        angle=_smooth_noise(rng, num_frames, fps, np.deg2rad(3.0), 0.6),
        scale=1.0 + _smooth_noise(rng, num_frames, fps, 0.03, 0.5),
        light_x=rng.uniform(-0.6, 0.6) + _smooth_noise(rng, num_frames, fps, 0.15, 0.3),
        light_y=rng.uniform(-0.6, 0.2) + _smooth_noise(rng, num_frames, fps, 0.1, 0.3),
        gain=rng.uniform(0.85, 1.1) + _smooth_noise(rng, num_frames, fps, 0.06, 0.4),
        blink=blink.astype(np.float32),
    )


def _soft(d: np.ndarray) -> np.ndarray:
    """Coverage of a pixel from its signed distance to an edge (negative inside), one-pixel ramp."""
    return np.clip(0.5 - d, 0.0, 1.0)


def _ellipse_d(u: np.ndarray, v: np.ndarray, a: float | np.ndarray, b: float | np.ndarray) -> np.ndarray:
    """Approximate signed distance (pixels) to an axis-aligned ellipse with half axes a, b."""
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    m = np.minimum(a, b)
    return (r - 1.0) * (float(m) if np.ndim(m) == 0 else m)


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray | Colour) -> None:
    """Composite ``colour`` over ``img`` (..., 3) with coverage ``mask`` (...), in place."""
    img += mask[..., None] * (np.asarray(colour, dtype=np.float32) - img)


class _Frame:
    """Maps window pixels to face coordinates (origin at the face centre, y down) for every frame."""

    def __init__(self, look: Appearance, motion: Motion, size: int) -> None:
        s = size / FRAME_SIZE
        self.size = size
        self.cx = (MOUTH_CENTRE[0] + look.mouth_offset[0]) * s + motion.dx * s  # (T,)
        self.cy = (MOUTH_CENTRE[1] + look.mouth_offset[1] - look.mouth_y) * s + motion.dy * s
        self.cos = np.cos(motion.angle)
        self.sin = np.sin(motion.angle)
        self.scale = motion.scale * s  # face pixels -> image pixels

    def coords(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Face coordinates (u, v), each (T, y1 - y0, x1 - x0), of the window's pixel centres."""
        ys = np.arange(y0, y1, dtype=np.float32) + 0.5
        xs = np.arange(x0, x1, dtype=np.float32) + 0.5
        X = xs[None, None, :] - self.cx[:, None, None].astype(np.float32)
        Y = ys[None, :, None] - self.cy[:, None, None].astype(np.float32)
        c = self.cos[:, None, None].astype(np.float32)
        sn = self.sin[:, None, None].astype(np.float32)
        k = (1.0 / self.scale)[:, None, None].astype(np.float32)
        return (X * c + Y * sn) * k, (-X * sn + Y * c) * k

    def to_image(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Face coordinates (T, K) -> image points (T, K, 2) as (x, y)."""
        c, sn, k = self.cos[:, None], self.sin[:, None], self.scale[:, None]
        x = self.cx[:, None] + k * (u * c - v * sn)
        y = self.cy[:, None] + k * (u * sn + v * c)
        return np.stack([x, y], axis=-1)

    def window(self, u0: float, u1: float, v0: float, v1: float, margin: float = 3.0) -> tuple[int, int, int, int]:
        """Pixel window (y0, y1, x0, x1) that holds the face-coordinate box in every frame."""
        corners_u = np.array([u0, u1, u0, u1])
        corners_v = np.array([v0, v0, v1, v1])
        pts = self.to_image(
            np.broadcast_to(corners_u, (len(self.cx), 4)), np.broadcast_to(corners_v, (len(self.cx), 4))
        )
        x0 = int(np.floor(pts[..., 0].min() - margin))
        x1 = int(np.ceil(pts[..., 0].max() + margin))
        y0 = int(np.floor(pts[..., 1].min() - margin))
        y1 = int(np.ceil(pts[..., 1].max() + margin))
        clamp = lambda a: int(min(max(a, 0), self.size))  # noqa: E731
        return clamp(y0), clamp(y1), clamp(x0), clamp(x1)


def _draw_mouth(img: np.ndarray, u: np.ndarray, v: np.ndarray, look: Appearance, shape: np.ndarray) -> None:
    """Lips, the dark opening, teeth and tongue. ``shape`` is (T, 5) = open, width, round, teeth, tongue;
    ``u, v`` are face coordinates of the window, ``img`` its pixels (T, h, w, 3)."""
    o, wd, rd, te, tg = (shape[:, i][:, None, None] for i in range(5))
    vm = v - look.mouth_y
    half_w = look.mouth_w * (0.82 + 0.36 * wd - 0.32 * rd)  # (T, 1, 1)
    inner_w = half_w * (0.86 - 0.3 * rd)
    gap = MAX_OPENING * o * (1.0 - 0.25 * rd)  # half height of the opening at the centre
    t_up = look.lip_upper * (1.0 + 0.5 * rd)
    t_lo = look.lip_lower * (1.0 + 0.4 * rd)
    s_out = np.sqrt(np.clip(1.0 - (u / half_w) ** 2, 0.0, 1.0)) ** 0.8
    s_in = np.sqrt(np.clip(1.0 - (u / inner_w) ** 2, 0.0, 1.0))
    bow = 1.2 * np.exp(-((u / 2.5) ** 2)) * (1.0 - o)  # Cupid's bow dip of the upper lip
    top = -(gap * s_in + t_up * s_out) + bow
    bottom = gap * s_in + t_lo * s_out
    lips = _soft(np.maximum(np.maximum(top - vm, vm - bottom), np.abs(u) - half_w))
    lip = np.asarray(look.lip, np.float32)
    # Lower lip a touch lighter (it catches the light), upper lip darker.
    lip_colour = lip * np.where(vm > 0, 1.08, 0.92)[..., None].astype(np.float32)
    _paint(img, lips, np.clip(lip_colour, 0, 1))
    # The opening: dark cavity, with the seam between the lips always a little dark.
    hole = _soft(np.maximum(np.abs(vm) - gap * s_in, np.abs(u) - inner_w))
    seam = _soft(np.maximum(np.abs(vm) - 0.6, np.abs(u) - inner_w)) * 0.55
    _paint(img, np.maximum(hole, seam), (0.18, 0.05, 0.06))
    # Teeth: bands under the upper lip and above the lower lip, with gaps between teeth.
    edge = gap * s_in
    tooth_h = np.minimum(te * 4.5, edge + 0.5)
    upper = _soft(vm - (-edge + tooth_h)) * hole
    lower = _soft((edge - 0.6 * tooth_h) - vm) * hole * (o > 0.25)
    gaps = 1.0 - 0.25 * (np.abs(((u + 1.75) % 3.5) - 1.75) < 0.35)
    teeth = np.maximum(upper, lower) * (te > 0.05)
    _paint(img, teeth, np.array([0.93, 0.9, 0.82], np.float32) * gaps[..., None])
    # Tongue: a pink blob rising from the floor of the mouth, pushed forward when visible.
    tongue_c = edge * (0.8 - 0.9 * tg)
    tongue = _soft(_ellipse_d(u, vm - tongue_c, inner_w * 0.55 + 0.01, 1.0 + 0.6 * edge + 2.0 * tg)) * hole
    tongue = tongue * np.clip(0.4 + tg, 0.0, 1.0)
    _paint(img, tongue, (0.85, 0.42, 0.45))
    # Shadow under the lower lip.
    chin = _soft(_ellipse_d(u, vm - (bottom.max() + 4.0), half_w * 0.7, 2.5) - 1.0)
    img *= (1.0 - 0.12 * chin)[..., None]


def render(
    look: Appearance, shape: np.ndarray, motion: Motion, size: int = FRAME_SIZE, chunk: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, size, size, 3) uint8 RGB and mouth points (T, 4, 2) as (x, y) pixel indices: left
    corner, right corner, top of the upper lip, bottom of the lower lip. Frames are drawn ``chunk`` at a time
    so the working arrays stay in cache."""
    T = shape.shape[0]
    frames = np.empty((T, size, size, 3), np.uint8)
    for t0 in range(0, T, chunk):
        sl = slice(t0, min(T, t0 + chunk))
        part = Motion(**{k: getattr(motion, k)[sl] for k in Motion.__dataclass_fields__})
        frames[sl] = _render_chunk(look, shape[sl], part, size)
    # Mouth points for landmark files.
    fr = _Frame(look, motion, size)
    half_w = look.mouth_w * (0.82 + 0.36 * shape[:, 1] - 0.32 * shape[:, 2])
    gap = MAX_OPENING * shape[:, 0] * (1.0 - 0.25 * shape[:, 2])
    zero = np.zeros(T)
    pu = np.stack([-half_w, half_w, zero, zero], axis=1)
    pv = look.mouth_y + np.stack([zero, zero, -(gap + look.lip_upper), gap + look.lip_lower], axis=1)
    # Pixel centres sit at +0.5 in the continuous frame; landmarks are pixel indices.
    return frames, (fr.to_image(pu, pv) - 0.5).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _background(look: Appearance, size: int) -> np.ndarray:
    """A static vertical gradient with a soft vignette -> (size, size, 3)."""
    ys = (np.arange(size, dtype=np.float32) + 0.5) / size
    xs = (np.arange(size, dtype=np.float32) + 0.5) / size
    bg1, bg2 = (np.asarray(c, np.float32) for c in look.background)
    bg = bg1[None, None] * (1 - ys)[:, None, None] + bg2[None, None] * ys[:, None, None]
    return bg * (1.0 - 0.25 * ((xs[None, :] - 0.5) ** 2 + (ys[:, None] - 0.5) ** 2))[..., None]


# The static head is drawn once into a sprite in face coordinates (one unit = one pixel of a
# FRAME_SIZE frame), then warped into every frame by the head pose with a single bilinear lookup.
# Channels: colour premultiplied by coverage (3), coverage, face coverage, normal x and y times face.
_SPRITE_HALF = 112  # the sprite covers u, v in [-112, 112)


@functools.lru_cache(maxsize=8)
def _sprite(look: Appearance) -> torch.Tensor:
    """The head without eyes and mouth (hair, neck, ears, face, fringe, brows, nose) and what shading
    needs (face coverage and surface normal) -> (7, 224, 224) float32."""
    n = 2 * _SPRITE_HALF
    c = np.arange(n, dtype=np.float32) - _SPRITE_HALF + 0.5
    u, v = np.broadcast_to(c[None, :], (n, n)), np.broadcast_to(c[:, None], (n, n))
    b = np.float32(look.face_h)
    a = look.face_w * (1.0 - look.jaw * 0.35 * np.clip(v / look.face_h, 0.0, 1.0) ** 2)
    face = _soft(_ellipse_d(u, v, a, b))
    skin = np.asarray(look.skin, np.float32)
    hair = np.asarray(look.hair, np.float32)
    img = np.zeros((n, n, 3), np.float32)
    alpha = np.zeros((n, n), np.float32)

    def paint(mask: np.ndarray, colour: np.ndarray) -> None:
        nonlocal alpha
        _paint(img, mask, colour)
        alpha = alpha + mask * (1.0 - alpha)

    paint(_soft(_ellipse_d(u, v + 10, look.face_w + 7, look.face_h + 2)) * (v < 10), hair)
    paint(_soft(np.maximum(np.abs(u) - look.face_w * 0.55, 30 - v)) * (v < 100), skin * 0.8)  # neck
    for side in (-1, 1):
        paint(_soft(_ellipse_d(u - side * look.face_w, v + 2, 5.5, 11)), skin * 0.92)  # ears
    paint(face, skin)
    if look.stubble > 0:
        paint(face * np.clip((v - look.nose_y + 4.0) / 20.0, 0, 1) * look.stubble, hair)
    hairline = -look.hairline + 3.0 * np.sin(u / 7.0)  # wavy fringe over the top of the face
    paint(face * _soft(v - hairline), hair)
    for side in (-1, 1):  # arched brows
        cu, cv = u - side * look.eye_sep, v + look.eye_y
        paint(_soft(_ellipse_d(cu, cv + 8.5 + 0.02 * cu**2, look.eye_w + 2.5, 1.7)), hair * 0.8)
    # Nose: a soft shadow down one side, nostrils, a highlight on the tip.
    length = (look.nose_y + look.eye_y) / 2
    ridge = _soft(_ellipse_d(u - 3.5, v - (look.nose_y - look.eye_y) / 2, 1.6, length))
    img *= (1.0 - 0.12 * ridge)[..., None]
    for side in (-1, 1):
        paint(_soft(_ellipse_d(u - side * 4.0, v - look.nose_y, 2.3, 1.3)) * 0.85, skin * 0.35)
    paint(_soft(_ellipse_d(u, v - look.nose_y + 3.5, 3.0, 2.2) + 1.0) * 0.25, np.ones(3, np.float32))
    nx = np.clip(u / a, -1, 1)
    ny = np.clip(v / b, -1, 1)
    premult = img * alpha[..., None]
    planes = [premult[..., 0], premult[..., 1], premult[..., 2], alpha, face, nx * face, ny * face]
    return torch.from_numpy(np.stack(planes))


def _render_chunk(look: Appearance, shape: np.ndarray, motion: Motion, size: int) -> np.ndarray:
    fr = _Frame(look, motion, size)
    T = shape.shape[0]
    u, v = fr.coords(0, size, 0, size)  # (T, H, W) face coordinates of every pixel
    # The jaw drops with the mouth: stretch the face between mouth and chin, shift what lies below.
    drop = 3.5 * shape[:, 0][:, None, None]
    v_src = v - drop * np.clip((v - look.mouth_y) / (look.face_h - look.mouth_y), 0.0, 1.0)
    grid = np.empty((T, size, size, 2), np.float32)
    grid[..., 0] = u * (1.0 / _SPRITE_HALF)
    grid[..., 1] = v_src * (1.0 / _SPRITE_HALF)
    sprite = _sprite(look)
    warped = torch.nn.functional.grid_sample(
        sprite.expand(T, *sprite.shape), torch.from_numpy(grid), mode="bilinear", align_corners=False
    ).numpy()  # (T, 7, H, W)
    alpha, face, nx, ny = warped[:, 3], warped[:, 4], warped[:, 5], warped[:, 6]
    bg = _background(look, size)
    img = np.empty((T, size, size, 3), np.float32)
    for ch in range(3):
        img[..., ch] = warped[:, ch] + (1.0 - alpha) * bg[:, :, ch]

    # Eyes, each in a window around it; they blink.
    skin = np.asarray(look.skin, np.float32)
    open_eye = 1.0 - motion.blink[:, None, None]
    for side in (-1, 1):
        cx = side * look.eye_sep
        y0, y1, x0, x1 = fr.window(cx - look.eye_w - 2, cx + look.eye_w + 2, -look.eye_y - 6, -look.eye_y + 6)
        eu, ev = fr.coords(y0, y1, x0, x1)
        win = img[:, y0:y1, x0:x1]
        cu, cv = eu - cx, ev + look.eye_y
        eh = look.eye_w * 0.48 * open_eye + 0.2
        white = _soft(_ellipse_d(cu, cv, look.eye_w, eh))
        lid = _soft(_ellipse_d(cu, cv + 0.6, look.eye_w + 0.8, eh + 1.3)) - white
        _paint(win, np.clip(lid, 0, 1) * 0.8, skin * 0.45)
        _paint(win, white, (0.93, 0.93, 0.9))
        r = np.sqrt(cu**2 + cv**2)
        _paint(win, _soft(r - 3.2) * white, look.iris)
        _paint(win, _soft(r - 1.4) * white, (0.03, 0.03, 0.03))

    # Mouth.
    reach = look.mouth_w * 1.2 + 2
    y0, y1, x0, x1 = fr.window(-reach, reach, look.mouth_y - 16, look.mouth_y + 20)
    mu, mv = fr.coords(y0, y1, x0, x1)
    _draw_mouth(img[:, y0:y1, x0:x1], mu, mv, look, shape)

    # Light: Lambertian shading of the face as a sphere-like surface, then the frame's gain.
    nz = np.sqrt(np.clip(face * face - nx * nx - ny * ny, 0.0, None))  # normals were stored times face
    lx = motion.light_x[:, None, None].astype(np.float32)
    ly = motion.light_y[:, None, None].astype(np.float32)
    inv_norm = 1.0 / np.sqrt(lx**2 + ly**2 + 1.0)
    shade = 0.55 * face + 0.5 * np.clip((nx * lx + ny * ly + nz) * inv_norm, 0.0, None)
    light = (1.0 - face + shade) * (255.0 * motion.gain[:, None, None].astype(np.float32))
    img *= light[..., None]
    img += 0.5
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)
