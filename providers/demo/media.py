"""The results demo mode makes locally, quickly and without any model: each shows what was asked and
says plainly that it is a demo, so nobody mistakes it for a real generation."""

from __future__ import annotations

import hashlib
import io
import math
import struct
import textwrap
import wave

from PIL import Image, ImageDraw, ImageFont

DEMO_BANNER = "DEMO RESULT"
IMAGE_SIZE = (512, 512)
CLIP_SIZE = (320, 180)
CLIP_FRAMES = 8
AUDIO_RATE = 22050
MAX_AUDIO_SECONDS = 3.0


def _color(seed: str, index: int) -> tuple[int, int, int]:
    """A dark color of its own per prompt and picture, so several images of one request differ."""
    digest = hashlib.sha256(f"{index}:{seed}".encode()).digest()
    return (digest[0] // 2, digest[1] // 2, digest[2] // 2)


def _draw_prompt(image: Image.Image, prompt: str, width: int) -> None:
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((12, 10), DEMO_BANNER, fill=(255, 220, 0), font=font)
    lines = textwrap.wrap(prompt, width=width)[:12] or ["(no prompt)"]
    draw.multiline_text((12, 34), "\n".join(lines), fill=(255, 255, 255), font=font, spacing=4)


def image_png(prompt: str, index: int = 0) -> bytes:
    """A PNG with the prompt written on a colored background."""
    image = Image.new("RGB", IMAGE_SIZE, _color(prompt, index))
    _draw_prompt(image, prompt, width=60)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def clip_gif(prompt: str) -> bytes:
    """A short animated GIF: the prompt over a background that shifts color from frame to frame (no
    video encoder is at hand without a model or a codec library; a GIF is what Pillow writes)."""
    frames = []
    for frame in range(CLIP_FRAMES):
        image = Image.new("RGB", CLIP_SIZE, _color(prompt, frame))
        _draw_prompt(image, prompt, width=36)
        frames.append(image)
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=250, loop=0)
    return out.getvalue()


def tone_wav(text: str, voice_id: str) -> bytes:
    """A mono WAV tone, longer for a longer text (up to three seconds), whose pitch depends on the
    voice, so a cloned voice sounds different from the default one."""
    pitch = 220 + hashlib.sha256(voice_id.encode()).digest()[0] * 2
    count = int(AUDIO_RATE * min(MAX_AUDIO_SECONDS, 0.5 + len(text) / 30))
    # Faded in and out, so the tone does not click.
    samples = (
        int(12000 * math.sin(2 * math.pi * pitch * i / AUDIO_RATE) * min(1.0, i / 800, (count - i) / 800))
        for i in range(count)
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(AUDIO_RATE)
        audio.writeframes(b"".join(struct.pack("<h", sample) for sample in samples))
    return out.getvalue()


def weights_tar() -> bytes:
    """What a demo training's "weights" URL serves: an empty tar archive (two zero blocks)."""
    return bytes(1024)
