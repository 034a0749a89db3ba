"""Seeded synthetic inputs for the trained models of the quantize benchmark (see fetch.py).

Trained models need inputs that look like what they were trained on, or the calibrated ranges
and the measured error say nothing. Nothing here reads real images or audio; everything is
drawn with numpy from generators seeded by name (make_fixtures.rng_for), so two runs give the
same arrays. What each input imitates:

- ppocr_det, [1, 3, 320, 320]: a scanned page. Light paper (per-page tint, a lighting gradient),
  a few columns of text lines made of glyph-like dark strokes (random ink colour, glyph and line
  sizes), sometimes a tinted block behind a paragraph or a dark rule, sensor noise, a slight
  blur. RGB in [0, 255], normalized as RapidOCR's DetPreProcess: (x / 255 - 0.5) / 0.5.
- ppocr_cls, [1, 3, 48, 192], and ppocr_rec, [1, 3, 48, 320]: one text-line crop, as RapidOCR
  feeds them: a line of glyphs scaled to height 48 with its aspect ratio kept, normalized as
  above, zero-padded on the right up to the model's width (TextClassifier / TextRecognizer
  resize_norm_img). For cls, every other sample is rotated by 180 degrees before the padding.
- silero_vad and silero_vad_op15 (the same streams for both): 16 kHz audio-like streams (silence with a noise floor, voiced segments: a
  gliding pitch with harmonics shaped by two moving formants and a syllable envelope, unvoiced
  segments: bursts of high-passed noise, background noise at a per-stream level), run through
  the float model chunk by chunk exactly as silero_vad's OnnxWrapper does (512 new samples
  plus the previous chunk's last 64, state carried over). A sample is one call at a seeded
  chunk of a stream: its `input` [1, 576], the `state` [2, 1, 128] the model itself (each
  variant its own) had then, and `sr` 16000. Calibration and held-out samples come from
  different streams.
"""

import numpy as np
from make_fixtures import rng_for

# RapidOCR's normalization for det, cls and rec: (pixel / 255 - 0.5) / 0.5.
MEAN, STD = 0.5, 0.5
DET_SIZE = 320  # det has dynamic H and W (multiples of 32); RapidOCR would resize to min side 736
CLS_SHAPE = (48, 192)  # RapidOCR's cls_image_shape [3, 48, 192]
REC_SHAPE = (48, 320)  # RapidOCR's rec_img_shape [3, 48, 320]
SAMPLE_RATE = 16000
CHUNK, CONTEXT = 512, 64  # silero_vad at 16 kHz: 512 new samples per call, 64 of context
CHUNKS_PER_STREAM = 64  # about 2 s of audio per stream
# Two calls per stream: with 8, the 32 calibration samples came from 4 streams, and one
# held-out stream louder than all of them made 71% of a fully int8 model's held-out noise
# (its audio clipped at the calibrated range).
SAMPLES_PER_STREAM = 2


def normalize(image):
    """HxWx3 pixels in [0, 255] -> 3xHxW float32 as RapidOCR feeds its models."""
    return ((np.clip(image, 0, 255) / 255.0 - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def blur(image):
    """A 3x3 box-ish blur (centre weighted), edges replicated: what resizing a scan does."""
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    out = 4 * image
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        out += padded[dy : dy + image.shape[0], dx : dx + image.shape[1]]
    return out / 8


def draw_glyphs(rng, canvas, top, left, height, width, ink):
    """Writes a line of glyph-like stroke clusters into canvas[top:top+height, left:left+width]."""
    x = left
    end = left + width
    while x < end - 2:
        if rng.random() < 0.12:  # word gap
            x += int(rng.integers(height // 3, height) + 1)
            continue
        glyph = int(max(3, height * rng.uniform(0.5, 1.0)))
        glyph = min(glyph, end - x)
        thick = max(1, int(round(height * rng.uniform(0.07, 0.14))))
        for _ in range(rng.integers(2, 6)):
            vertical = rng.random() < 0.5
            if vertical:
                y0 = top + int(rng.integers(0, max(1, height // 3)))
                y1 = top + int(rng.integers(height // 2, height + 1))
                x0 = x + int(rng.integers(0, max(1, glyph - thick)))
                canvas[y0:y1, x0 : x0 + thick] = ink
            else:
                y0 = top + int(rng.integers(height // 8, max(height // 8 + 1, height - thick)))
                x0 = x + int(rng.integers(0, max(1, glyph // 2)))
                x1 = x + int(rng.integers(glyph // 2, glyph + 1))
                canvas[y0 : y0 + thick, x0:x1] = ink
        x += glyph + int(rng.integers(1, max(2, height // 5) + 1))


def paper(rng, height, width):
    """Light paper: a per-page tint and a linear lighting gradient, HxWx3 in [0, 255]."""
    tint = rng.uniform(200, 252) + rng.normal(0, 6, 3)
    gy, gx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    light = 1 + rng.uniform(-0.08, 0.08) * gy + rng.uniform(-0.08, 0.08) * gx
    return tint[None, None, :] * light[:, :, None]


def ink_colour(rng):
    """Mostly near-black ink; sometimes blue, red or grey."""
    if rng.random() < 0.75:
        return rng.uniform(0, 60) + rng.normal(0, 8, 3)
    return rng.uniform(0, 160, 3)


def document(rng, size=DET_SIZE):
    """A page-like RGB image, size x size, values in [0, 255]."""
    image = paper(rng, size, size)
    columns = int(rng.integers(1, 3))
    margin = int(rng.integers(8, 30))
    gutter = int(rng.integers(10, 24))
    column_width = (size - 2 * margin - (columns - 1) * gutter) // columns
    for column in range(columns):
        left = margin + column * (column_width + gutter)
        y = margin + int(rng.integers(0, 20))
        while y < size - margin - 8:
            height = int(rng.integers(7, 22))  # glyph height in pixels
            lines = int(rng.integers(1, 7))  # a paragraph
            ink = ink_colour(rng)
            if rng.random() < 0.15:  # a tinted block behind the paragraph
                block = rng.uniform(150, 240, 3)
                image[y - 3 : y + lines * int(height * 1.5) + 3, left - 3 : left + column_width + 3] = block
            for _ in range(lines):
                if y + height > size - margin:
                    break
                width = int(column_width * (rng.uniform(0.3, 0.95) if rng.random() < 0.3 else rng.uniform(0.85, 1.0)))
                draw_glyphs(rng, image, y, left, height, width, ink)
                y += int(height * rng.uniform(1.3, 1.9))
            y += int(rng.integers(4, 30))
            if rng.random() < 0.1:  # a rule between paragraphs
                image[y : y + int(rng.integers(1, 3)), left : left + column_width] = ink
                y += 6
    image = blur(image) + rng.normal(0, rng.uniform(1, 6), image.shape)
    return image


def text_line(rng, height, max_width, rotate):
    """One text-line crop scaled to `height`, aspect kept, normalized, zero-padded to max_width."""
    width = int(min(max_width, height * rng.uniform(1.5, 2.2 * max_width / height)))
    image = paper(rng, height, width)
    glyph = int(height * rng.uniform(0.55, 0.8))
    top = int(rng.integers(1, height - glyph))
    draw_glyphs(rng, image, top, int(rng.integers(1, 6)), glyph, width - 6, ink_colour(rng))
    image = blur(image) + rng.normal(0, rng.uniform(1, 6), image.shape)
    if rotate:
        image = image[::-1, ::-1]
    padded = np.zeros((3, height, max_width), dtype=np.float32)
    padded[:, :, :width] = normalize(image)
    return padded


def ocr_inputs(model_name, split, samples):
    """{"x": [samples, 1, 3, H, W]} for ppocr_det / ppocr_cls / ppocr_rec."""
    rng = rng_for(f"bench-quantize/{model_name}/x/{split}")
    if model_name == "ppocr_det":
        images = [normalize(document(rng)) for _ in range(samples)]
    else:
        height, width = CLS_SHAPE if model_name == "ppocr_cls" else REC_SHAPE
        images = [text_line(rng, height, width, model_name == "ppocr_cls" and i % 2 == 1) for i in range(samples)]
    return {"x": np.stack(images)[:, None]}


# ---------------------------------------------------------------------------------------------
# Audio


def one_pole(signal, coefficient):
    """y[n] = (1 - a) x[n] + a y[n-1], a low-pass, as a truncated FIR (taps below 1e-7 dropped)."""
    taps = 1 + int(np.ceil(np.log(1e-7) / np.log(coefficient))) if coefficient > 0 else 1
    kernel = (1 - coefficient) * coefficient ** np.arange(taps)
    return np.convolve(signal, kernel)[: len(signal)]


def voiced(rng, length):
    """A vowel-like segment: gliding pitch, harmonics weighted by two moving formants, syllables."""
    t = np.arange(length) / SAMPLE_RATE
    f0 = rng.uniform(90, 260) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    formants = [rng.uniform(300, 900), rng.uniform(900, 2500)]
    drift = 1 + 0.2 * np.sin(2 * np.pi * rng.uniform(1, 4) * t)
    signal = np.zeros(length)
    for k in range(1, 40):
        frequency = k * f0
        gain = sum(np.exp(-(((frequency - f * drift) / (0.25 * f)) ** 2)) for f in formants) + 0.05 / k
        signal += gain * np.sin(k * phase) * (frequency < SAMPLE_RATE / 2)
    syllables = np.clip(np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6)), 0, None) ** 0.7
    return signal * (0.3 + 0.7 * syllables) / (np.max(np.abs(signal)) + 1e-9)


def unvoiced(rng, length):
    """A fricative-like burst: high-passed noise under an attack/decay envelope."""
    noise = rng.standard_normal(length)
    noise = noise - one_pole(noise, rng.uniform(0.5, 0.9))
    envelope = np.minimum(1, np.linspace(0, rng.uniform(3, 10), length)) * np.exp(-np.linspace(0, rng.uniform(0.5, 4), length))
    return noise * envelope / (np.max(np.abs(noise)) + 1e-9)


def stream(rng, length):
    """About `length` samples of 16 kHz audio-like signal in [-1, 1]."""
    parts = []
    total = 0
    while total < length:
        kind = rng.choice(["silence", "voiced", "unvoiced", "voiced"])
        size = int(rng.uniform(0.08, 0.6) * SAMPLE_RATE)
        if kind == "silence":
            part = np.zeros(size)
        elif kind == "voiced":
            part = voiced(rng, size) * rng.uniform(0.05, 0.6)
        else:
            part = unvoiced(rng, size) * rng.uniform(0.02, 0.3)
        parts.append(part)
        total += size
    signal = np.concatenate(parts)[:length]
    background = one_pole(rng.standard_normal(length), rng.uniform(0, 0.95))
    signal += background / np.std(background) * 10 ** rng.uniform(-4, -1.7)
    return np.clip(signal, -1, 1).astype(np.float32)


def silero_inputs(model_path, split, samples):
    """{"input", "state", "sr"} for a silero_vad model: its calls at seeded chunks of streams.

    Each stream runs through the float model from a zero state, the way silero_vad's
    OnnxWrapper calls it; SAMPLES_PER_STREAM of its calls (seeded chunk indices) become samples.
    """
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    rng = rng_for(f"bench-quantize/silero_vad/audio/{split}")
    sr = np.array(SAMPLE_RATE, dtype=np.int64)
    inputs, states = [], []
    while len(inputs) < samples:
        audio = stream(rng, CHUNKS_PER_STREAM * CHUNK)
        picked = set(rng.choice(CHUNKS_PER_STREAM, SAMPLES_PER_STREAM, replace=False).tolist())
        state = np.zeros((2, 1, 128), dtype=np.float32)
        context = np.zeros((1, CONTEXT), dtype=np.float32)
        for index in range(CHUNKS_PER_STREAM):
            chunk = np.concatenate([context, audio[None, index * CHUNK : (index + 1) * CHUNK]], axis=1)
            if index in picked and len(inputs) < samples:
                inputs.append(chunk)
                states.append(state)
            _, state = sess.run(None, {"input": chunk, "state": state, "sr": sr})
            context = chunk[:, -CONTEXT:]
    return {
        "input": np.stack(inputs),
        "state": np.stack(states).astype(np.float32),
        "sr": np.full([samples], SAMPLE_RATE, dtype=np.int64),
    }
