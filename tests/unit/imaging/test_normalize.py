"""normalize(): every format to 8-bit RGB, oriented and flattened, within the backend's limits;
passthrough byte for byte; animation frames; bounds checked before any pixel is decoded."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from service.errors import InputError, Reason
from service.imaging.encode import ENCODE_MAX_PIXELS, plan_size
from service.imaging.frames import spread
from service.imaging.header import read_header
from service.imaging.normalize import (
    EncodedFrame,
    NormalizedImage,
    PixelFrame,
    normalize,
    passes_as_is,
)
from service.imaging.spec import REKOGNITION_INPUT, BackendInput, DecodeLimits
from tests import image_files as files
from tests.image_files import (
    FRAME_COLOURS,
    GREY16,
    OPAQUE,
    QUADRANT_COLOURS,
    SAMPLES,
    WHITE,
    centre_colour,
    close,
    nearest_frame,
    quadrant_colours,
)

LIMITS = DecodeLimits()
SMALL = DecodeLimits(max_pixels=4_000_000)  # 2000 x 2000
PIXELS = BackendInput("pixels", s3_max_bytes=None, pixel_side=64)
FULL_PIXELS = BackendInput("pixels", s3_max_bytes=None, pixel_side=0)  # no reduction at all
# Rekognition's limits, but wanting at least 300 px a side: forces a re-encode of the small JPEGs
# and PNGs that would otherwise pass through, so the encoded path's pixels can be checked.
ENCODED_300 = BackendInput("encoded", min_side=300)
STILLS = [name for name in SAMPLES if not any(a in name for a in ("apng", "animated", "repeat"))]
ANIMATIONS = {"gif": files.gif_animated, "apng": files.apng, "webp": files.webp_animated}


def frame_images(result: NormalizedImage) -> list[Image.Image]:
    """Each frame as a Pillow RGB image (encoded frames decoded back)."""
    images = []
    for frame in result.frames:
        if isinstance(frame, PixelFrame):
            images.append(frame.image)
        else:
            with Image.open(io.BytesIO(frame.data)) as image:
                images.append(image.convert("RGB"))
    return images


def only_image(result: NormalizedImage) -> Image.Image:
    assert len(result.frames) == 1
    return frame_images(result)[0]


def pixel(image: Image.Image, x: float, y: float) -> tuple[int, ...]:
    """The pixel at fractions (x, y) of the width and height."""
    value = image.getpixel((int(image.width * x), int(image.height * y)))
    assert isinstance(value, tuple)
    return value


def reason_of(
    data: bytes, target: BackendInput = REKOGNITION_INPUT, limits: DecodeLimits = LIMITS
) -> Reason:
    with pytest.raises(InputError) as caught:
        normalize(data, target, limits)
    return caught.value.reason


# -- every format decodes to 8-bit RGB -------------------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLES))
@pytest.mark.parametrize("target", [FULL_PIXELS, ENCODED_300], ids=["pixels", "encoded"])
def test_every_format_becomes_8_bit_rgb(name: str, target: BackendInput) -> None:
    fmt, make = SAMPLES[name]
    result = normalize(make(), target, LIMITS)
    assert result.source_format == fmt
    assert result.converted
    for frame in result.frames:
        if isinstance(frame, PixelFrame):
            assert frame.image.mode == "RGB"
        else:
            assert isinstance(frame, EncodedFrame)
            assert frame.format == "jpeg"
            with Image.open(io.BytesIO(frame.data)) as image:
                assert (image.format, image.mode) == ("JPEG", "RGB")
                assert image.size == (frame.width, frame.height)
                assert min(image.size) >= 300
                assert not image.getexif()  # no metadata travels to the backend


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in STILLS
        if not any(a in n for a in ("grey", "alpha", "trns", "transparent", "exif"))
    ],
)
def test_colour_survives_every_format(name: str) -> None:
    """The solid OPAQUE samples stay OPAQUE (CMYK inverted right, 16-bit scaled, not clipped)."""
    image = only_image(normalize(SAMPLES[name][1](), FULL_PIXELS, LIMITS))
    assert close(centre_colour(image), OPAQUE, 12), centre_colour(image)


@pytest.mark.parametrize(
    "make", [files.png_grey16, files.tiff_grey16], ids=["png-grey16", "tiff-grey16"]
)
def test_16_bit_grey_keeps_its_high_byte(make: Callable[[], bytes]) -> None:
    image = only_image(normalize(make(), FULL_PIXELS, LIMITS))
    high = GREY16 >> 8
    assert image.getextrema() == ((high, high),) * 3


def test_16_bit_rgb_is_scaled_to_8_bits() -> None:
    image = only_image(normalize(files.png_rgb16(), FULL_PIXELS, LIMITS))
    assert centre_colour(image) == (0xDC, 0x14, 0x14)


@pytest.mark.parametrize("make", [files.jpeg_cmyk, files.tiff_cmyk], ids=["jpeg", "tiff"])
@pytest.mark.parametrize("target", [FULL_PIXELS, ENCODED_300], ids=["pixels", "encoded"])
def test_cmyk_is_converted(make: Callable[[], bytes], target: BackendInput) -> None:
    image = only_image(normalize(make(), target, LIMITS))
    assert close(centre_colour(image), OPAQUE, 12)


@pytest.mark.parametrize(
    ("make", "opaque"),
    [
        (files.png_rgba, OPAQUE),
        (files.png_grey_alpha, None),
        (files.png_palette_transparent, OPAQUE),
        (files.webp_lossless_alpha, OPAQUE),
        (files.gif_transparent, OPAQUE),
    ],
    ids=["png-rgba", "png-grey-alpha", "png-palette-trns", "webp-alpha", "gif-transparent"],
)
@pytest.mark.parametrize("target", [FULL_PIXELS, ENCODED_300], ids=["pixels", "encoded"])
def test_alpha_is_flattened_onto_white(
    make: Callable[[], bytes], opaque: tuple[int, int, int] | None, target: BackendInput
) -> None:
    """Left half transparent, right half opaque: white on the left, the colour on the right."""
    image = only_image(normalize(make(), target, LIMITS))
    assert close(pixel(image, 0.2, 0.5), WHITE, 6)
    right = pixel(image, 0.8, 0.5)
    if opaque is None:  # grey with alpha: OPAQUE's luminance, the same on every channel
        assert close(right, (80, 80, 80), 6)
    else:
        assert close(right, opaque, 12)


# -- EXIF orientation ------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("target", [FULL_PIXELS, ENCODED_300], ids=["pixels", "encoded"])
def test_exif_orientation_is_applied(orientation: int, target: BackendInput) -> None:
    """Stored rotated or mirrored (120x160 for 5-8), shown upright: 160x120 (scaled up to 300
    px a side when encoded), red top left, green top right, blue bottom left, yellow bottom
    right."""
    data = files.jpeg_oriented(orientation)
    with Image.open(io.BytesIO(data)) as stored:
        assert stored.size == ((120, 160) if orientation >= 5 else (160, 120))
    result = normalize(data, target, LIMITS)
    assert (result.width, result.height) == (160, 120)
    image = only_image(result)
    assert image.width > image.height
    expected = (160, 120) if target.mode == "pixels" else (400, 300)
    assert image.size == expected
    for found, wanted in zip(quadrant_colours(image), QUADRANT_COLOURS, strict=True):
        assert close(found, wanted, 30), (orientation, quadrant_colours(image))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_passed_through_jpeg_reports_its_oriented_size(orientation: int) -> None:
    data = files.jpeg_oriented(orientation)
    result = normalize(data, REKOGNITION_INPUT, LIMITS)
    assert not result.converted
    assert (result.width, result.height) == (160, 120)
    frame = result.frames[0]
    assert isinstance(frame, EncodedFrame)
    assert (frame.width, frame.height) == ((120, 160) if orientation >= 5 else (160, 120))


@pytest.mark.parametrize("exif_last", [False, True], ids=["exif-first", "exif-last"])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_a_png_orientation_is_read_from_its_exif_chunk_wherever_it_is(
    orientation: int, exif_last: bool, loads: list[Image.Image]
) -> None:
    """Passed through, the PNG is not decoded to find an eXIf chunk after the image data (as
    Pillow's getexif() would); converted, the chunk is applied wherever it was."""
    data = files.png_oriented(orientation, exif_last=exif_last)
    assert (data.index(b"eXIf") > data.index(b"IDAT")) is exif_last
    untouched = normalize(data, REKOGNITION_INPUT, LIMITS)
    assert not untouched.converted
    assert (untouched.width, untouched.height) == (160, 120)
    assert loads == []
    image = only_image(normalize(data, FULL_PIXELS, LIMITS))
    assert image.size == (160, 120)
    for found, wanted in zip(quadrant_colours(image), QUADRANT_COLOURS, strict=True):
        assert close(found, wanted, 2), (orientation, quadrant_colours(image))


# -- the encoded target: JPEG within Rekognition's limits ------------------------------------------


def encoded(result: NormalizedImage) -> tuple[EncodedFrame, Image.Image]:
    frame = result.frames[0]
    assert isinstance(frame, EncodedFrame)
    assert frame.format == "jpeg"
    assert len(frame.data) <= REKOGNITION_INPUT.max_bytes
    image = only_image(result)
    assert image.size == (frame.width, frame.height)
    assert REKOGNITION_INPUT.min_side <= min(image.size)
    assert max(image.size) <= REKOGNITION_INPUT.max_side
    return frame, image


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_a_tiny_image_is_scaled_up_to_80_px(fmt: str) -> None:
    result = normalize(files.tiny(fmt), REKOGNITION_INPUT, LIMITS)
    assert result.converted
    assert (result.width, result.height) == (40, 40)
    _, image = encoded(result)
    assert image.size == (80, 80)
    assert close(centre_colour(image), OPAQUE, 12)


@pytest.mark.parametrize("tall", [False, True], ids=["wide", "tall"])
def test_a_very_wide_image_is_scaled_down_to_10000_px(tall: bool) -> None:
    data = files.wide()
    if tall:
        with Image.open(io.BytesIO(data)) as image:
            data = files.encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG")
    result = normalize(data, REKOGNITION_INPUT, LIMITS)
    _, image = encoded(result)
    assert image.size == ((250, 10_000) if tall else (10_000, 250))
    if not tall:  # red on the left half, blue on the right, all the way to the edges
        assert close(pixel(image, 0.01, 0.5), FRAME_COLOURS[0], 20)
        assert close(pixel(image, 0.99, 0.5), FRAME_COLOURS[2], 20)


def test_an_extreme_aspect_ratio_is_padded_to_80_px_with_white() -> None:
    """12000x30 cannot be both <= 10000 long and >= 80 short by scaling (80/30 up, 10000/12000
    down): the long side wins (10000x25) and the short one is padded with white to 80."""
    result = normalize(files.wide(12_000, 30), REKOGNITION_INPUT, LIMITS)
    _, image = encoded(result)
    assert image.size == (10_000, 80)
    assert close(pixel(image, 0.25, 0.02), WHITE, 12)  # the bands above and below
    assert close(pixel(image, 0.25, 0.97), WHITE, 12)
    assert close(pixel(image, 0.25, 0.5), FRAME_COLOURS[0], 30)  # the picture in the middle
    assert close(pixel(image, 0.75, 0.5), FRAME_COLOURS[2], 30)


@pytest.mark.parametrize("make", [files.noise_png, files.noise_jpeg], ids=["png", "jpeg"])
def test_over_5_mib_is_re_encoded_under_it(make: Callable[[], bytes]) -> None:
    data = make()
    assert len(data) > REKOGNITION_INPUT.max_bytes
    result = normalize(data, REKOGNITION_INPUT, LIMITS)
    assert result.converted
    frame, image = encoded(result)
    assert image.size == (result.width, result.height)  # under 12.6 MP: no need to shrink first
    assert len(frame.data) <= REKOGNITION_INPUT.max_bytes


def test_a_huge_photo_is_brought_to_about_12_mp() -> None:
    """48 MP: planned down to at most ENCODE_MAX_PIXELS, aspect ratio kept."""
    assert plan_size((8000, 6000), REKOGNITION_INPUT) == (4096, 3072)
    assert plan_size((4000, 3000), REKOGNITION_INPUT) == (4000, 3000)
    width, height = plan_size((9000, 9000), REKOGNITION_INPUT)
    assert width == height
    assert width * height <= ENCODE_MAX_PIXELS


# -- passthrough -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [files.jpeg_cmyk, files.png_rgb16, files.png_grey16], ids=["cmyk", "rgb16", "grey16"]
)
def test_samples_rekognition_does_not_document_are_converted_not_passed(
    make: Callable[[], bytes],
) -> None:
    result = normalize(make(), REKOGNITION_INPUT, LIMITS)
    assert result.converted
    (frame,) = result.frames
    assert isinstance(frame, EncodedFrame)
    with Image.open(io.BytesIO(frame.data)) as decoded:
        assert (decoded.format, decoded.mode) == ("JPEG", "RGB")


@pytest.mark.parametrize(
    "make",
    [
        files.jpeg_baseline,
        files.jpeg_progressive,
        files.png_rgb,
        files.png_rgba,
        files.png_palette_transparent,
    ],
    ids=["jpeg", "jpeg-progressive", "png", "png-rgba", "png-palette"],
)
def test_a_jpeg_or_png_within_limits_passes_through_byte_for_byte(
    make: Callable[[], bytes],
) -> None:
    data = make()
    result = normalize(data, REKOGNITION_INPUT, LIMITS)
    assert not result.converted
    (frame,) = result.frames
    assert isinstance(frame, EncodedFrame)
    assert frame.data is data
    assert frame.format == result.source_format


@pytest.mark.parametrize(
    "make",
    [files.apng, files.gif_animated, files.webp_animated, files.gif_still, files.heic, files.bmp],
    ids=["apng", "gif-animated", "webp-animated", "gif-still", "heic", "bmp"],
)
def test_other_formats_and_animations_never_pass_through(make: Callable[[], bytes]) -> None:
    result = normalize(make(), REKOGNITION_INPUT, LIMITS)
    assert result.converted
    assert all(isinstance(frame, EncodedFrame) for frame in result.frames)


def test_s3_passthrough_is_decided_from_a_prefix() -> None:
    """An S3 object over 5 MiB but within 15 MB stays a reference when its first bytes say it
    is a still JPEG within the sides; an APNG, a GIF or too many bytes do not."""
    data = files.noise_jpeg()
    header = read_header(data[:65_536], complete=False)
    assert header is not None
    assert passes_as_is(header, len(data), REKOGNITION_INPUT, s3=True)
    assert not passes_as_is(header, len(data), REKOGNITION_INPUT, s3=False)
    assert not passes_as_is(header, 16_000_000, REKOGNITION_INPUT, s3=True)
    assert not passes_as_is(header, len(data), BackendInput("encoded", s3_max_bytes=None), s3=True)
    apng = read_header(files.apng()[:4096], complete=False)
    assert apng is not None
    assert apng.animated
    assert not passes_as_is(apng, 2000, REKOGNITION_INPUT, s3=True)


# -- animation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(ANIMATIONS))
@pytest.mark.parametrize("target", [PIXELS, REKOGNITION_INPUT], ids=["pixels", "encoded"])
@pytest.mark.parametrize(
    ("count", "limit", "expected"),
    [
        (12, 5, [0, 3, 6, 8, 11]),
        (6, 5, [0, 1, 2, 4, 5]),
        (3, 5, [0, 1, 2]),
        (7, 2, [0, 6]),
        (7, 1, [0]),
    ],
)
def test_animation_frames_are_spread_with_both_ends(
    kind: str, target: BackendInput, count: int, limit: int, expected: list[int]
) -> None:
    result = normalize(ANIMATIONS[kind](count), target, DecodeLimits(max_frames=limit))
    assert result.frame_count == count
    assert result.converted
    assert [frame.index for frame in result.frames] == expected
    # Each frame is the picture at its index: frame i of the source is FRAME_COLOURS[i].
    assert [nearest_frame(centre_colour(image)) for image in frame_images(result)] == expected


def test_identical_frames_are_analysed_once() -> None:
    """0 0 0 1 1 2 2 2: positions 0 2 4 5 7 are chosen; 2 repeats 0, so 3 (the next new
    picture) takes its slot; 4 repeats 3 and 7 repeats 5."""
    result = normalize(files.gif_repeated(), PIXELS, LIMITS)
    assert result.frame_count == 8
    assert [frame.index for frame in result.frames] == [0, 3, 5]
    assert [nearest_frame(centre_colour(image)) for image in frame_images(result)] == [0, 1, 2]


@pytest.mark.parametrize("target", [REKOGNITION_INPUT, PIXELS], ids=["encoded", "pixels"])
def test_repeats_do_not_crowd_out_the_pictures_between_them(target: BackendInput) -> None:
    """15 frames of one picture, then 1 2 3 4 5: positions 0 5 10 14 19 are chosen, four of them
    repeats of frame 0; their slots go to the next new pictures, the last frame still counts."""
    result = normalize(files.gif_sequence((0,) * 15 + (1, 2, 3, 4, 5)), target, LIMITS)
    assert result.frame_count == 20
    assert [frame.index for frame in result.frames] == [0, 15, 16, 17, 19]
    expected = [0, 1, 2, 3, 5]
    assert [nearest_frame(centre_colour(image)) for image in frame_images(result)] == expected


def test_an_animation_of_one_picture_gives_one_frame() -> None:
    result = normalize(files.gif_sequence((3, 3, 3, 3)), REKOGNITION_INPUT, LIMITS)
    assert result.frame_count == 4
    assert [frame.index for frame in result.frames] == [0]


def test_a_multipage_tiff_is_analysed_by_its_first_page() -> None:
    result = normalize(files.tiff_multipage(), PIXELS, LIMITS)
    assert result.frame_count == 1
    assert nearest_frame(centre_colour(only_image(result))) == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 500), st.integers(0, 12))
def test_spread_includes_both_ends_evenly(count: int, limit: int) -> None:
    chosen = spread(count, limit)
    assert len(chosen) == min(count, limit)
    assert list(chosen) == sorted(set(chosen))
    if chosen:
        assert chosen[0] == 0
        assert all(0 <= position < count for position in chosen)
    if len(chosen) >= 2:
        assert chosen[-1] == count - 1
        gaps = [b - a for a, b in itertools.pairwise(chosen)]
        assert max(gaps) - min(gaps) <= 1


# -- the pixels target -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "side"),
    [
        (lambda: files.jpeg(1000, 800), 256),  # JPEG: DCT scaling at decode
        (lambda: files.png(1000, 800), 256),
        (lambda: files.webp_lossy(1000, 800), 100),
        (lambda: files.heic(640, 480), 100),
        (files.wide, 64),
    ],
    ids=["jpeg", "png", "webp", "heic", "wide"],
)
def test_pixels_are_reduced_to_at_least_the_model_side(
    make: Callable[[], bytes], side: int
) -> None:
    target = BackendInput("pixels", s3_max_bytes=None, pixel_side=side)
    result = normalize(make(), target, LIMITS)
    image = only_image(result)
    assert side <= min(image.size) < 2 * side
    ratio = (result.width / result.height) / (image.width / image.height)
    assert 0.95 < ratio < 1.05  # reduced, not distorted


def test_pixels_are_never_enlarged() -> None:
    target = BackendInput("pixels", s3_max_bytes=None, pixel_side=256)
    image = only_image(normalize(files.tiny("PNG"), target, LIMITS))
    assert image.size == (40, 40)


# -- bounds before decoding ------------------------------------------------------------------------


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[Image.Image]:
    """Every ImageFile.load() call (where Pillow allocates and decodes pixels)."""
    calls: list[Image.Image] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        calls.append(self)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


def test_the_spy_sees_decoding(loads: list[Image.Image]) -> None:
    normalize(files.png_rgb(), PIXELS, LIMITS)
    assert loads


@pytest.mark.parametrize(
    ("make", "target", "limits"),
    [
        (files.pixel_flood_png, PIXELS, SMALL),
        (files.zlib_bomb_png, PIXELS, SMALL),
        (files.gif_canvas_bomb, REKOGNITION_INPUT, LIMITS),
        (files.gif_canvas_bomb, PIXELS, LIMITS),
        (files.tiff_tile_bomb, REKOGNITION_INPUT, LIMITS),
        (files.jpeg_coefficient_bomb, PIXELS, LIMITS),  # 100 MP: at the bound, 6 B/px over it
        (lambda: files.jpeg_coefficient_bomb(12_000, 8_000), REKOGNITION_INPUT, LIMITS),
        (lambda: files.jpeg_coefficient_bomb(2_000, 2_000), PIXELS, SMALL),
        (lambda: files.jpeg(3000, 2000), PIXELS, SMALL),  # an honest 6 MP photo, over 4 MP
        (files.heif_size_bomb, REKOGNITION_INPUT, LIMITS),
        (lambda: files.heif_size_bomb(files.avif()), PIXELS, LIMITS),
    ],
    ids=[
        "png-pixel-flood",
        "png-zlib-bomb",
        "gif-canvas",
        "gif-canvas-pixels",
        "tiff-tile",
        "jpeg-coefficients",
        "jpeg-coefficients-wide",
        "jpeg-coefficients-small",
        "over-the-bound",
        "heic-ispe",
        "avif-ispe",
    ],
)
def test_bombs_are_refused_before_decoding(
    make: Callable[[], bytes],
    target: BackendInput,
    limits: DecodeLimits,
    loads: list[Image.Image],
) -> None:
    assert reason_of(make(), target, limits) is Reason.IMAGE_TOO_MANY_PIXELS
    assert loads == []


def test_a_pixel_flood_within_the_bound_is_truncated_not_decoded(
    loads: list[Image.Image],
) -> None:
    """10,000 x 10,000 is the default bound; its one row of data is found missing before the
    decoder would fill 200 MB with black."""
    assert reason_of(files.pixel_flood_png(), PIXELS) is Reason.TRUNCATED_IMAGE
    assert loads == []


# -- broken and unsupported input ------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in SAMPLES if n != "tiff-multipage"])
@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
def test_a_truncated_file_is_a_typed_error(name: str, fraction: float) -> None:
    """Cut short anywhere: TRUNCATED_IMAGE (or INVALID_IMAGE_FORMAT when the cut leaves a
    header that no longer makes sense), never a black or partial picture. A multi-page TIFF
    cut after its first page is still a whole first page, so it is left out."""
    data = files.truncated(SAMPLES[name][1](), fraction)
    for target in (PIXELS, REKOGNITION_INPUT):
        assert reason_of(data, target) in (Reason.TRUNCATED_IMAGE, Reason.INVALID_IMAGE_FORMAT)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"/>',
        b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2",  # an MP4
        b"BM" + bytes(30),  # a BMP signature with no valid header size
        bytes(range(256)) * 4,
    ],
    ids=["empty", "pdf", "svg", "mp4", "bm-junk", "bytes"],
)
def test_what_is_not_a_supported_image_is_not_an_image(data: bytes) -> None:
    assert reason_of(data) is Reason.NOT_AN_IMAGE


def test_the_time_limit_stops_normalization() -> None:
    tiny_deadline = DecodeLimits(timeout_s=1e-9)
    with pytest.raises(InputError) as caught:
        normalize(files.gif_animated(), REKOGNITION_INPUT, tiny_deadline)
    assert caught.value.reason is Reason.DECODE_TIMEOUT
    assert "MODERATION_DECODE_TIMEOUT_S" in str(caught.value)


def test_a_passthrough_needs_no_time() -> None:
    """Nothing is decoded, so nothing can time out."""
    result = normalize(files.png_rgb(), REKOGNITION_INPUT, DecodeLimits(timeout_s=1e-9))
    assert not result.converted


# -- hostile mutations of every format -------------------------------------------------------------

MUTATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
        st.tuples(st.just("cut"), st.floats(0, 1, exclude_max=True), st.just(0)),
        st.tuples(st.just("insert"), st.floats(0, 1, exclude_max=True), st.integers(1, 16)),
        st.tuples(st.just("delete"), st.floats(0, 1, exclude_max=True), st.integers(1, 16)),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, mutations: list[tuple[str, float, int]]) -> bytes:
    mutated = bytearray(data)
    for kind, where, value in mutations:
        at = int(where * len(mutated))
        if kind == "flip" and mutated:
            mutated[at] = value
        elif kind == "cut":
            del mutated[max(1, at) :]
        elif kind == "insert":
            mutated[at:at] = bytes([0xFF - value]) * value
        elif kind == "delete":
            del mutated[at : at + value]
    return bytes(mutated)


@settings(
    max_examples=2000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.sampled_from(sorted(SAMPLES)), MUTATIONS, st.sampled_from([PIXELS, REKOGNITION_INPUT]))
def test_mutated_images_raise_only_input_errors(
    name: str, mutations: list[tuple[str, float, int]], target: BackendInput
) -> None:
    """Byte flips, cuts, insertions and deletions in any format's sample: a result or an
    InputError with a typed reason, never another exception (the stage would call it a bug)."""
    data = mutate(SAMPLES[name][1](), mutations)
    try:
        result = normalize(data, target, SMALL)
    except InputError as error:
        reason: Reason | None = error.reason
    else:
        reason = None
        assert 1 <= len(result.frames) <= SMALL.max_frames
    assert reason is None or isinstance(reason, Reason)
