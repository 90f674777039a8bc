"""An image-caption set from Debian's Open Clip Art Library packages, for `vista train clip`.

Debian's `openclipart-png` and `openclipart-svg` (`apt-get install openclipart-png openclipart-svg`)
install the same drawings twice under /usr/share/openclipart: `png/<category>/.../<name>.png` and
`svg/<category>/.../<name>.svg` (same relative path). About 1,200 of the PNGs are symbolic links to a
drawing filed under another category as well; they are the same image and are counted once (the real
file). Each SVG carries RDF metadata (`<metadata><rdf:RDF><cc:Work>`): `dc:title`, `dc:description`,
`dc:creator` and keywords (`dc:subject/rdf:Bag/rdf:li`). This script pairs every PNG with its SVG, makes a
caption from the title and keywords, and writes `OUT/captions.tsv` (header `filepath<TAB>title`, absolute
PNG paths, one row per image, sorted by relative path) -- the captions-file format `vista train clip --data`
and open_clip's `CsvDataset` (`--csv-img-key filepath --csv-caption-key title`) read.

Caption = `<title>. <keyword>, <keyword>, ...`, lower case, e.g. "sleeping bear under stars with snow |
circle. mammal, animal" (from the title "sleeping bear under stars with snow | circle" and the keywords
mammal, bear, sleeping, animal, snow):

* title: `dc:title` of the cc:Work, `_` turned into spaces, whitespace collapsed, the credit-line prefix
  "Clipart by <name> - " removed. A title is not usable -- the image is skipped (or, with `--generic stem`,
  titled by its file name instead) -- when it is empty, a placeholder ("untitled", "drawing", ...), has no
  letter, is the creator's name, or is a collection's name rather than the drawing's: shared by more than
  `--max-title-repeats` images (default 10; e.g. "gramastar" 1,375 stars, "Part of the Flat Icon Collection
  (...)" 800+ icons, "Lemon SVG theme" 411, "card" 226, "AIGA_Symbol_Signs" 122, "Various Cliparts" 115),
  counted over all images before any `--limit`.
* keywords, in the file's order: lower case, `_` turned into spaces; dropped when empty, generic (STOP_KEYWORDS:
  the Perl "HASH(0x...)" artefacts "hash" and "0x93148a4", "unsorted", "clip art", "clipart", "media", "public domain",
  "image", "svg", "png", icon-theme and generator tags such as "magick", "theme", "icons",
  "lemon_theme_icon", ...), the drawing's creator's name, or made only of words the title or an earlier
  kept keyword already has (word de-duplication: "bear", "sleeping", "snow" above); at most `--max-keywords`
  (default 8). `dc:description` is not used: 81 % are empty and many of the rest are e-mail addresses,
  "HASH(0x868b0e8)" or long prose.
* tabs and newlines become spaces (the TSV has exactly two columns).

Images are also skipped when the SVG is missing or its metadata cannot be parsed, when the PNG's shorter side
is under `--min-side` pixels (default 32), or when it has more than `--max-pixels` pixels (default 89,478,485,
Pillow's MAX_IMAGE_PIXELS: decoding those takes a gigabyte or more; one of them exceeds the 178,956,970-pixel
limit at which Pillow and vista refuse to decode at all).

The PNGs are large (median shorter side ~170 px, 17 over 16 megapixels) and most are RGBA or palette images
whose transparent pixels are black underneath: a plain `convert("RGB")` -- what open_clip's transform and
vista's loader do -- shows black line art on black. `--resize S` writes, for each kept image, an RGB copy
composited on white and scaled so its longest side is S (Pillow LANCZOS, premultiplied alpha; never
enlarged) to `OUT/images/<relative path>.png` (the folder is remade), and points the TSV at those copies:
a training set that decodes in microseconds and looks as the drawings are meant to look. Default off (the
TSV names the original PNGs).

`--square` (with `--resize`) pads each copy to a white square: evaluation's shortest-side resize and centre
crop, and training's RandomResizedCrop (area 0.9-1.0, aspect 3/4-4/3), then keep the whole drawing (most are
not square: 45 x 64 is common).

`--limit N` keeps N of the usable images, evenly spaced through the sorted list (so every category keeps
its share), before any resizing. Also written: `OUT/stats.json` (counts per skip reason, keyword and title
frequencies, examples). Deterministic: the same packages and options give byte-identical files.

    python tools/data/openclipart_captions.py --out bench-out/openclipart                 # originals
    python tools/data/openclipart_captions.py --out bench-out/openclipart-64 --resize 64 --square  # small copies
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import shutil
import sys
import time
import xml.etree.ElementTree as ET

DEFAULT_ROOT = pathlib.Path("/usr/share/openclipart")
PILLOW_MAX_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS: Pillow warns above, refuses above twice this
# Keywords that say nothing about the drawing (frequent ones checked against the packages' metadata:
# "hash" 1,619 -- a Perl HASH(0x...) stringification --, "magick" 1,375 and "theme" 1,323 from generated
# sets, "icons" 1,377 from icon themes, "lemon_theme_icon" 411, "unsorted" 132) plus the generic words
# of clip-art sites.
STOP_KEYWORDS = {
    "", "hash", "unsorted", "magick", "theme", "themes", "icons", "lemon theme icon", "lemon", "etiquette",
    "gramastar", "clip art", "clipart", "clip-art", "cliparts", "clip arts", "media", "public domain",
    "publicdomain", "pd", "image", "images", "picture", "svg", "png", "openclipart", "open clip art",
    "drawing", "illustration", "inkscape", "signs and symbols", "various", "misc", "other", "none", "new",
}
PLACEHOLDER_TITLES = {"untitled", "no title", "notitle", "title", "drawing", "image", "clipart", "clip art",
                      "svg", "png", "picture", "new document", "layer 1", "unnamed", "test", "none"}
# "Clipart by Nicu Buculei - smiley111", "Clipart by Pedro A. Gracia Fajardo - Spain": the site's credit line
TITLE_PREFIX = re.compile(r"^clip ?art by [^-]+ - ")
HASH_ARTEFACT = re.compile(r"^(hash\()?0x[0-9a-f]+\)?$")  # Perl's HASH(0x93148a4) in keywords


# ----------------------------------------------------------------------------------------------
# SVG metadata
# ----------------------------------------------------------------------------------------------
def local(tag) -> str:
    """An element's tag without its namespace."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def child(el, name):
    return next((c for c in el if local(c.tag) == name), None)


def text_of(el) -> str:
    return "".join(el.itertext()).strip() if el is not None else ""


def agent_title(el) -> str:
    """dc:creator / dc:publisher: `<cc:Agent><dc:title>name</dc:title></cc:Agent>` (or plain text)."""
    if el is None:
        return ""
    agent = child(el, "Agent")
    return text_of(child(agent, "title")) if agent is not None else text_of(el)


def read_metadata(svg: pathlib.Path):
    """(title, description, keywords, creator) of the SVG's cc:Work, or None when there is no readable
    metadata. Parses only the `<metadata>` element when it stands alone (the SVGs' bodies can be
    megabytes), the whole document otherwise."""
    data = svg.read_bytes()
    root = None
    m = re.search(rb"<metadata\b.*?</metadata>", data, re.S)
    if m:
        try:
            root = ET.fromstring(m.group(0))
        except ET.ParseError:  # a prefix declared on <svg> only
            root = None
    if root is None:
        try:
            root = ET.fromstring(data)
        except ET.ParseError:
            return None
    work = next((el for el in root.iter() if local(el.tag) == "Work"), None)
    if work is None:
        return None
    title = text_of(child(work, "title"))
    description = text_of(child(work, "description"))
    subject = child(work, "subject")
    keywords = []
    if subject is not None:
        bag = child(subject, "Bag")
        if bag is not None:
            keywords = [text_of(li) for li in bag if local(li.tag) == "li"]
        else:  # a plain-text subject: comma or space separated
            keywords = [k for k in re.split(r"[,;]\s*|\s+", text_of(subject)) if k]
    return title, description, keywords, agent_title(child(work, "creator"))


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------
def clean(text: str) -> str:
    """Lower case, `_` as spaces, tabs / newlines / runs of spaces as one space."""
    return re.sub(r"\s+", " ", text.replace("_", " ")).strip().lower()


def clean_title(title: str) -> str:
    return TITLE_PREFIX.sub("", clean(title)).strip()


def stem_title(rel: pathlib.Path) -> str:
    """A title from the file name: `sleeping_bear_under_sta_02` -> "sleeping bear under sta"."""
    s = re.sub(r"[_\-\s]*\d+[a-z]?$", "", rel.stem)  # a trailing counter (_01, _02b)
    return clean(s.replace("-", " "))


def words(text: str) -> set:
    return set(re.findall(r"[a-z0-9]+", text))


def title_problem(title: str, repeats: int, max_repeats: int, creator: str = ""):
    """Why a (cleaned) title is not the drawing's own, or None."""
    if not title:
        return "empty title"
    if creator and title == clean(creator):
        return "the title is the creator's name"
    if title in PLACEHOLDER_TITLES:
        return "placeholder title"
    if not re.search(r"[^\W\d_]", title):
        return "title without letters"
    if repeats > max_repeats:
        return f"collection title (shared by more than {max_repeats} images)"
    return None


def make_caption(title: str, keywords, creator: str, max_keywords: int):
    """(caption, kept keywords)."""
    seen = words(title)
    kept = []
    creator = clean(creator)
    for k in keywords:
        k = clean(k)
        if k in STOP_KEYWORDS or HASH_ARTEFACT.match(k) or (creator and k == creator) or len(kept) >= max_keywords:
            continue
        w = words(k)
        if not w or w <= seen:
            continue
        kept.append(k)
        seen |= w
    caption = title.rstrip(" .") + "." + (" " + ", ".join(kept) if kept else "")
    return caption, kept


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------
def png_size(path: pathlib.Path):
    """(width, height) from the PNG header (no decoding)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def resized_copy(src: pathlib.Path, dst: pathlib.Path, side: int, square: bool = False) -> tuple:
    """An RGB copy of `src` composited on white, its longest side `side` (never enlarged), Pillow LANCZOS
    on premultiplied alpha (Image.resize premultiplies RGBA / LA), with `square` centred on a white square
    of its longest side; written as PNG. Returns its size."""
    from PIL import Image

    with Image.open(src) as im:
        im.load()
        has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode in ("P", "L", "RGB", "I", "I;16")
                                                                     and "transparency" in im.info)
        im = im.convert("RGBA" if has_alpha else "RGB")
    w, h = im.size
    scale = side / max(w, h)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        im = im.resize(size, Image.LANCZOS, reducing_gap=3.0)
    if im.mode == "RGBA":
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im).convert("RGB")
    if square and im.size[0] != im.size[1]:
        n = max(im.size)
        canvas = Image.new("RGB", (n, n), (255, 255, 255))
        canvas.paste(im, ((n - im.size[0]) // 2, (n - im.size[1]) // 2))
        im = canvas
    dst.parent.mkdir(parents=True, exist_ok=True)
    im.save(dst, format="PNG", optimize=False)
    return im.size


def evenly(items: list, n) -> list:
    """At most n of `items`, evenly spaced (vista's `keep_evenly`)."""
    if n is None or n >= len(items):
        return items
    return [items[i * len(items) // n] for i in range(n)]


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=pathlib.Path, required=True, help="output folder (captions.tsv, stats.json, images/)")
    ap.add_argument("--root", type=pathlib.Path, default=DEFAULT_ROOT,
                    help=f"the packages' folder holding png/ and svg/ (default {DEFAULT_ROOT})")
    ap.add_argument("--limit", type=int, default=None,
                    help="keep N usable images, evenly spaced through the sorted list")
    ap.add_argument("--min-side", type=int, default=32, help="skip PNGs whose shorter side is under PX (default 32)")
    ap.add_argument("--max-pixels", type=int, default=PILLOW_MAX_PIXELS,
                    help=f"skip PNGs with more pixels (default {PILLOW_MAX_PIXELS:,}, Pillow's MAX_IMAGE_PIXELS)")
    ap.add_argument("--resize", type=int, default=None, metavar="S",
                    help="write RGB copies (white background, longest side S, LANCZOS) into OUT/images/ and "
                         "name them in the TSV (default: the original PNGs)")
    ap.add_argument("--square", action="store_true",
                    help="with --resize: pad each copy to a white square (so the centre crop of evaluation and "
                         "the 0.9-1.0 crops of training keep the whole drawing)")
    ap.add_argument("--max-keywords", type=int, default=8, help="keywords per caption at most (default 8)")
    ap.add_argument("--max-title-repeats", type=int, default=10,
                    help="a title shared by more images is a collection's name, not usable (default 10)")
    ap.add_argument("--generic", choices=("skip", "stem"), default="skip",
                    help="images without a usable title: skip them (default) or title them by their file name")
    args = ap.parse_args(argv)

    if args.square and not args.resize:
        ap.error("--square requires --resize")
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # sizes are read from headers and checked against --max-pixels here
    png_root, svg_root = args.root / "png", args.root / "svg"
    if not png_root.is_dir() or not svg_root.is_dir():
        raise SystemExit(f"{png_root} / {svg_root} missing: apt-get install openclipart-png openclipart-svg")
    t0 = time.time()
    skipped = collections.Counter()
    examples_skipped = collections.defaultdict(list)

    def skip(reason, rel):
        skipped[reason] += 1
        if len(examples_skipped[reason]) < 3:
            examples_skipped[reason].append(str(rel))

    # 1. PNG files (real files only), paired with their SVG, metadata read.
    pngs = sorted(png_root.rglob("*.png"), key=lambda p: p.relative_to(png_root).as_posix())
    entries, seen_real = [], set()
    for p in pngs:
        rel = p.relative_to(png_root)
        real = p.resolve()
        if p.is_symlink() or real in seen_real:
            if real.is_file() and real.is_relative_to(png_root.resolve()):
                skip("duplicate: a link to a PNG filed under another category", rel)
            else:
                skip("broken link", rel)
            continue
        seen_real.add(real)
        svg = svg_root / rel.with_suffix(".svg")
        if not svg.exists():
            skip("no SVG", rel)
            continue
        meta = read_metadata(svg)
        if meta is None:
            skip("SVG metadata unreadable or absent", rel)
            continue
        title, _desc, keywords, creator = meta
        entries.append(dict(rel=rel, png=real, title=clean_title(title), raw_title=title, keywords=keywords,
                            creator=creator))
    n_png_files = len(seen_real)

    # 2. Titles: collection names are those shared by many images (counted over every paired image).
    repeats = collections.Counter(e["title"] for e in entries)
    usable = []
    for e in entries:
        why = title_problem(e["title"], repeats[e["title"]], args.max_title_repeats, e["creator"])
        if why is not None:
            if args.generic == "stem" and stem_title(e["rel"]) and re.search(r"[^\W\d_]", stem_title(e["rel"])):
                e["title"], e["title_from"] = stem_title(e["rel"]), "file name"
            else:
                skip(f"no usable title: {why}", e["rel"])
                continue
        else:
            e["title_from"] = "dc:title"
        usable.append(e)

    # 3. Image sizes.
    sized = []
    for e in usable:
        try:
            w, h = png_size(e["png"])
        except Exception as err:  # noqa: BLE001 -- any unreadable PNG is skipped and counted
            skip(f"PNG unreadable ({type(err).__name__})", e["rel"])
            continue
        if min(w, h) < args.min_side:
            skip(f"PNG shorter side under --min-side {args.min_side}", e["rel"])
            continue
        if w * h > args.max_pixels:
            skip(f"PNG over --max-pixels {args.max_pixels:,}", e["rel"])
            continue
        e["size"] = (w, h)
        sized.append(e)

    # 4. Captions, --limit, copies.
    chosen = evenly(sized, args.limit)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.resize and (out / "images").is_dir():
        shutil.rmtree(out / "images")  # this script's own copies: remade, so no stale file stays
    rows, kw_counter, n_kw = [], collections.Counter(), collections.Counter()
    for i, e in enumerate(chosen):
        caption, kept = make_caption(e["title"], e["keywords"], e["creator"], args.max_keywords)
        kw_counter.update(kept)
        n_kw[len(kept)] += 1
        path = e["png"]
        if args.resize:
            path = out / "images" / e["rel"]
            e["resized"] = resized_copy(e["png"], path, args.resize, args.square)
        rows.append((str(path), caption, e))
        if args.resize and (i + 1) % 500 == 0:
            print(f"  {i + 1}/{len(chosen)} copies ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    with open(out / "captions.tsv", "w", encoding="utf-8", newline="\n") as f:
        f.write("filepath\ttitle\n")
        for path, caption, _ in rows:
            f.write(f"{path}\t{caption}\n")

    captions = [c for _, c, _ in rows]
    distinct = len(set(captions))
    stats = dict(
        root=str(args.root), out=str(out), options={k: (str(v) if isinstance(v, pathlib.Path) else v)
                                                     for k, v in vars(args).items()},
        png_entries=len(pngs), png_files=n_png_files, paired_with_metadata=len(entries), usable_titles=len(usable),
        after_size_checks=len(sized), written=len(rows), distinct_captions=distinct,
        titles_from_file_name=sum(1 for _, _, e in rows if e["title_from"] == "file name"),
        skipped=dict(sorted(skipped.items(), key=lambda kv: -kv[1])),
        skipped_examples={k: v for k, v in examples_skipped.items()},
        keywords_per_caption=dict(sorted(n_kw.items())),
        top_keywords=kw_counter.most_common(40),
        collection_titles=[(t, n) for t, n in repeats.most_common(40) if n > args.max_title_repeats],
        caption_chars=dict(min=min(map(len, captions), default=0), max=max(map(len, captions), default=0),
                           mean=round(sum(map(len, captions)) / max(1, len(captions)), 1)),
        examples=[dict(file=str(e["rel"]), raw_title=e["raw_title"], keywords=e["keywords"], caption=c)
                  for _, c, e in evenly(rows, 12)],
        resize=args.resize,
    )
    (out / "stats.json").write_text(json.dumps(stats, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    print(f"{len(pngs)} PNG entries, {n_png_files} files (links to the same drawing counted once), "
          f"{len(entries)} paired with SVG metadata, {len(usable)} with a usable title, {len(sized)} after the size "
          f"checks; wrote {len(rows)} rows ({distinct} distinct captions) to {out / 'captions.tsv'}"
          + (f", copies at longest side {args.resize} in {out / 'images'}" if args.resize else "")
          + f" ({time.time() - t0:.0f} s)")
    print("skipped:")
    for reason, n in stats["skipped"].items():
        print(f"  {n:6d}  {reason}")
    print("examples:")
    for ex in stats["examples"]:
        print(f"  {ex['caption']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
