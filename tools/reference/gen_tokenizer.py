"""Golden fixtures for the CLIP tokenizer (open_clip.tokenizer.SimpleTokenizer).

Writes <out_dir>/clip_tokenizer.json:
  {"reference": "open_clip.tokenizer.SimpleTokenizer", "versions": {...},
   "context_length": 77, "vocab_size": 49408,
   "cases": [{"text": str, "ids": [77 ints]}, {"text": ..., "ids": ..., "mojibake": true}, ...],
   "encode_cases": [{"text": str, "ids": [...] (SimpleTokenizer.encode, no sot/eot)}],
   "decode_cases": [{"ids": [...], "text": str (SimpleTokenizer.decode)}]}

Cases marked "mojibake" are the MOJIBAKE list below and any other case whose text ftfy's
heuristic encoding repair (fix_encoding) changes; the Rust port implements that repair too,
but the tests report those cases separately.

Also writes <out_dir>/hf_clip_tokenizer.json and hf_tokenizer.json.gz: the same texts (and a few
more on which the two differ) through transformers' CLIPTokenizer, the rules vista follows for
transformers-layout checkpoints (see hf_main).

Run standalone (writes crates/vista/tests/fixtures/tokenizer/):
    python tools/reference/gen_tokenizer.py
or through tools/reference/gen_fixtures.py, which calls main(out_dir).

    python tools/reference/gen_tokenizer.py --rust-tables
regenerates crates/vista/src/clip/tokenizer/tables.rs, the Unicode/HTML/codec tables the
Rust port of the text cleaning (ftfy.fix_text, html.unescape, str.lower, the `regex`
module's \\p{L}/\\p{N}) is pinned to. Run it with the pinned requirements.txt environment.
"""

from __future__ import annotations

import argparse
import html
import html.entities
import json
import pathlib
import platform
import sys
import unicodedata
from typing import Dict, List, Tuple

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "crates" / "vista" / "tests" / "fixtures" / "tokenizer"
TABLES_RS = REPO_ROOT / "crates" / "vista" / "src" / "clip" / "tokenizer" / "tables.rs"
CONTEXT_LENGTH = 77


# ----------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------

IMAGENET_ISH = [
    "tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray",
    "stingray", "rooster", "hen", "ostrich", "brambling", "goldfinch", "house finch", "junco",
    "indigo bunting", "American robin", "bulbul", "jay", "magpie", "chickadee", "American dipper",
    "kite (bird of prey)", "bald eagle", "vulture", "great grey owl", "fire salamander",
    "smooth newt", "eft", "spotted salamander", "axolotl", "American bullfrog", "tree frog",
    "tailed frog", "loggerhead sea turtle", "leatherback sea turtle", "mud turtle", "terrapin",
    "box turtle", "banded gecko", "green iguana", "Carolina anole",
    "desert grassland whiptail lizard", "agama", "frilled-necked lizard", "alligator lizard",
    "Gila monster", "European green lizard", "chameleon", "Komodo dragon", "Nile crocodile",
    "American alligator", "triceratops", "worm snake", "ring-necked snake",
    "eastern hog-nosed snake", "smooth green snake", "kingsnake", "garter snake", "water snake",
    "vine snake", "night snake", "boa constrictor", "African rock python", "Indian cobra",
    "green mamba", "sea snake", "Saharan horned viper", "eastern diamondback rattlesnake",
    "sidewinder rattlesnake", "trilobite", "harvestman", "scorpion", "yellow garden spider",
    "barn spider", "European garden spider", "southern black widow", "tarantula", "wolf spider",
    "tick", "centipede", "black grouse", "ptarmigan", "ruffed grouse", "prairie grouse", "peafowl",
    "quail", "partridge", "African grey parrot", "macaw", "sulphur-crested cockatoo", "lorikeet",
    "coucal", "bee eater", "hornbill", "hummingbird", "jacamar", "toucan", "duck",
    "red-breasted merganser", "goose", "black swan", "tusker", "echidna", "platypus", "jellyfish",
    "sea anemone", "brain coral", "flatworm", "nematode", "conch", "snail", "slug", "sea slug",
    "chiton", "chambered nautilus", "Dungeness crab", "rock crab", "fiddler crab",
    "red king crab", "American lobster", "spiny lobster", "crayfish", "hermit crab", "isopod",
    "white stork", "black stork", "spoonbill", "flamingo", "little blue heron", "great egret",
    "bittern bird", "crane bird", "limpkin", "common gallinule", "American coot", "bustard",
    "ruddy turnstone", "dunlin", "common redshank", "dowitcher", "oystercatcher", "pelican",
    "king penguin", "albatross", "grey whale", "killer whale", "dugong", "sea lion", "Chihuahua",
    "Japanese Chin", "Maltese", "Pekingese", "Shih Tzu", "King Charles Spaniel", "Papillon",
    "toy terrier", "Rhodesian Ridgeback", "Afghan Hound", "Basset Hound", "Beagle", "Bloodhound",
    "Bluetick Coonhound", "Black and Tan Coonhound", "Treeing Walker Coonhound", "English foxhound",
    "Redbone Coonhound", "borzoi", "Irish Wolfhound", "Italian Greyhound", "Whippet",
    "Ibizan Hound", "Norwegian Elkhound", "Otterhound", "Saluki", "Scottish Deerhound",
    "Weimaraner", "Staffordshire Bull Terrier", "American Staffordshire Terrier",
    "Bedlington Terrier", "Border Terrier", "Kerry Blue Terrier", "Irish Terrier",
    "Norfolk Terrier", "Norwich Terrier", "Yorkshire Terrier", "Wire Fox Terrier",
    "Lakeland Terrier", "Sealyham Terrier", "Airedale Terrier", "Cairn Terrier",
    "Australian Terrier", "Dandie Dinmont Terrier", "Boston Terrier", "Miniature Schnauzer",
    "Giant Schnauzer", "Standard Schnauzer", "Scottish Terrier", "Tibetan Terrier",
    "Australian Silky Terrier", "Soft-coated Wheaten Terrier", "West Highland White Terrier",
    "Lhasa Apso", "Flat-Coated Retriever", "Curly-coated Retriever", "Golden Retriever",
    "Labrador Retriever", "Chesapeake Bay Retriever", "German Shorthaired Pointer", "Vizsla",
    "English Setter", "Irish Setter", "Gordon Setter", "Brittany dog", "Clumber Spaniel",
    "English Springer Spaniel", "Welsh Springer Spaniel", "Cocker Spaniel", "Sussex Spaniel",
    "Irish Water Spaniel", "Kuvasz", "Schipperke", "Groenendael dog", "Malinois", "Briard",
    "Australian Kelpie", "Komondor", "Old English Sheepdog", "Shetland Sheepdog", "collie",
    "Border Collie", "Bouvier des Flandres dog", "Rottweiler", "German Shepherd Dog",
    "Dobermann", "Miniature Pinscher", "Greater Swiss Mountain Dog", "Bernese Mountain Dog",
    "Appenzeller Sennenhund", "Entlebucher Sennenhund", "Boxer", "Bullmastiff", "Tibetan Mastiff",
    "French Bulldog", "Great Dane", "St. Bernard", "husky", "Alaskan Malamute", "Siberian Husky",
    "Dalmatian", "Affenpinscher", "Basenji", "pug", "Leonberger", "Newfoundland dog",
    "Great Pyrenees dog", "Samoyed", "Pomeranian", "Chow Chow", "Keeshond",
    "brussels griffon", "Pembroke Welsh Corgi", "Cardigan Welsh Corgi", "Toy Poodle",
    "Miniature Poodle", "Standard Poodle", "Mexican hairless dog (xoloitzcuintli)",
    "grey wolf", "Alaskan tundra wolf", "red wolf or maned wolf", "coyote", "dingo", "dhole",
    "African wild dog", "hyena", "red fox", "kit fox", "Arctic fox", "grey fox", "tabby cat",
    "tiger cat", "Persian cat", "Siamese cat", "Egyptian Mau", "cougar", "lynx", "leopard",
    "snow leopard", "jaguar", "lion", "tiger", "cheetah", "brown bear", "American black bear",
    "polar bear", "sloth bear", "mongoose", "meerkat", "tiger beetle", "ladybug",
    "ground beetle", "longhorn beetle", "leaf beetle", "dung beetle", "rhinoceros beetle",
    "weevil", "fly", "bee", "ant", "grasshopper", "cricket insect", "stick insect", "cockroach",
    "praying mantis", "cicada", "leafhopper", "lacewing", "dragonfly", "damselfly",
    "red admiral butterfly", "ringlet butterfly", "monarch butterfly", "small white butterfly",
    "sulphur butterfly", "gossamer-winged butterfly", "starfish", "sea urchin",
    "sea cucumber", "cottontail rabbit", "hare", "Angora rabbit", "hamster", "porcupine",
    "fox squirrel", "marmot", "beaver", "guinea pig", "common sorrel horse", "zebra", "pig",
    "wild boar", "warthog", "hippopotamus", "ox", "water buffalo", "bison", "ram (adult male sheep)",
    "bighorn sheep", "Alpine ibex", "hartebeest", "impala (antelope)", "gazelle",
    "arabian camel", "llama", "weasel", "mink", "European polecat", "black-footed ferret",
    "otter", "skunk", "badger", "armadillo", "three-toed sloth", "orangutan", "gorilla",
    "chimpanzee", "gibbon", "siamang", "guenon", "patas monkey", "baboon", "macaque", "langur",
]

TEMPLATES = [
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a pixelated photo of the {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of a large {}.",
    "a origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of a {}.",
    "itap of a {}.",
    "art of the {}.",
]

CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    "A kitchen with a stove, a sink and a refrigerator.",
    "Two dogs playing with a frisbee in the park",
    "a cat sitting on a laptop keyboard",
    "An old red double-decker bus driving down a London street.",
    "A plate of spaghetti with meatballs and basil",
    "Children flying kites on the beach at sunset.",
    "A group of people standing around a table with food on it.",
    "The quick brown fox jumps over the lazy dog.",
    "Street view of a busy intersection in Tokyo at night, neon signs everywhere.",
    "a diagram",
    "a dog",
    "a cat",
    "photo",
    "A bowl of ramen topped with a soft-boiled egg, nori and scallions.",
    "An aerial photograph of farmland, with circular irrigation fields.",
    "a watercolor painting of a lighthouse on a rocky cliff",
    "A vintage car parked in front of a pastel-coloured house in Havana.",
    "a close-up of a bee collecting pollen from a sunflower",
    "A snowboarder mid-air performing a trick against a clear blue sky.",
]

LONG_TEXTS = [
    " ".join(["a photo of a dog running through a field of tall grass on a sunny afternoon"] * 8),
    "In the beginning God created the heaven and the earth. And the earth was without form, "
    "and void; and darkness was upon the face of the deep. And the Spirit of God moved upon "
    "the face of the waters. And God said, Let there be light: and there was light. And God "
    "saw the light, that it was good: and God divided the light from the darkness.",
    " ".join(str(i) for i in range(200)),
    "word " * 75,  # 75 words: exactly 77 with sot/eot
    "word " * 76,  # one over: eot replaces the last word
    "word " * 74,
    "!" * 500,
    "supercalifragilisticexpialidocious" * 12,
    "antidisestablishmentarianism " * 20,
    "🐶" * 100,
    "日本語のテキスト" * 30,
]

SPECIAL = [
    "", " ", "   ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028\u2029",
    "hello   world", "hello\tworld", "hello\nworld", "hello\r\nworld\r\n", "  leading and trailing  ",
    "tabs\t\t\tand\n\n\nnewlines", "nbsp\u00a0between\u00a0words", "ideographic\u3000space",
    "em\u2003space and thin\u2009space", "narrow\u202fnbsp", "ogham\u1680space",
    "file\x1cgroup\x1drecord\x1eunit\x1fseparators", "vertical\x0btab and form\x0cfeed",
    "next\x85line", "zero\u200bwidth\u200bspace", "soft\u00adhyphen", "mongolian\u180evowel",
    "!!!", "...", "?!?!", "a, b; c: d.", "--- *** ___", "(parentheses) [brackets] {braces}",
    "\"double\" 'single' `backtick`", "hello!!! world???", "@#$%^&*()_+-=[]{}|;':\",./<>?",
    "email@example.com", "C++ and C# and F#", "50% off!!!", "$100.00 or €85,50 or £70",
    "0", "1", "12", "123", "2024-01-15", "3.14159", "1,000,000", "1st 2nd 3rd 4th",
    "version 2.0.1", "phone: +1 (555) 123-4567", "½ ¾ ² ³ ⁴ ⅓", "Ⅻ roman numerals Ⅳ",
    "٣ arabic-indic digit", "४२ devanagari digits", "１２３ fullwidth digits",
    "it's", "don't", "they're", "we've", "I'm", "you'll", "he'd", "IT'S", "DON'T", "THEY'RE",
    "it\u2019s a dog\u2019s life", "\u2018quoted\u2019 and \u201cdouble quoted\u201d",
    "the dog's ball's color", "'s 't 're 've 'm 'll 'd", "rock 'n' roll", "o'clock o'reilly",
    "dogs' toys", "it'S mixed Case", "'ſ long s", "\u02bcmodifier apostrophe",
    "HELLO WORLD", "Hello World", "hElLo WoRlD", "ALL CAPS CAPTION OF A DOG",
    "café", "naïve", "résumé", "Ångström", "Zürich", "Málaga", "Øresund", "Łódź", "Dvořák",
    "façade", "crème brûlée", "piñata", "São Paulo", "Kraków", "Reykjavík", "Þórr", "Ærø",
    "ΑΒΓΔ αβγδ", "ΟΔΟΣ", "Σίσυφος", "ΣΑΣ ΣΑΣ", "σ ς Σ", "Ελληνικά γράμματα", "ὈΔΥΣΣΕΎΣ",
    "Привет, мир!", "МОСКВА", "Ёлка и ёж", "Україна", "Беларусь",
    "İstanbul", "ISTANBUL", "ıi İI", "DİYARBAKIR", "Iğdır",
    "Straße", "STRASSE", "ẞ capital sharp s", "Fußball", "groß",
    "猫", "一只猫坐在沙发上", "東京タワー", "ひらがな カタカナ", "한국어 텍스트", "中文，标点。",
    "साड़ी", "कुर्ता", "नमस्ते दुनिया", "हिन्दी में एक वाक्य", "ক বাংলা", "தமிழ்",
    "مرحبا بالعالم", "العربية", "שלום עולם", "فارسی", "اردو زبان",
    "ภาษาไทย", "Tiếng Việt có dấu", "ქართული", "Հայերեն", "አማርኛ",
    "😀", "🐶🐱", "I ❤️ NY", "👨‍👩‍👧‍👦 family", "👩🏽‍💻 coder", "🏳️‍🌈 flag", "🇺🇸🇫🇷🇯🇵",
    "👍🏻👍🏼👍🏽👍🏾👍🏿", "🧑‍🚀 astronaut", "❤", "✔ check", "☃ snowman", "🏴󠁧󠁢󠁷󠁬󠁳󠁿 wales",
    "a photo of a 🍕 pizza", "emoji with variation ☺️ and ☺︎",
    "&amp;", "fish &amp; chips", "&lt;b&gt;bold&lt;/b&gt;", "it&#39;s", "it&#x27;s", "a&nbsp;b",
    "&amp;amp;", "&amp;amp;amp;lt;", "&copy 2024", "&copy; 2024", "&eacute;t&eacute;",
    "P&EACUTE;REZ", "&Ntilde; &NTILDE; &nTILDE;", "&hellip;", "&mdash; &ndash;",
    "&#8364; &#x20AC; &#X20ac;", "&#0; &#1; &#128; &#x80; &#xD800; &#1114112;",
    "&#9999999999999999;", "&notin; &notit; &not", "&ampfoo;", "&unknownentity;", "& alone",
    "AT&T", "Q&A", "a < b & c > d &amp; e", "x<y &amp; z", "&lt;3 &LT;3", "&quot;quoted&quot;",
    "&#65&#66&#67", "&#x41;&#x42;", "&frac12; cup", "&nbsp;&nbsp;&nbsp;spaced", "&zwj;&zwnj;",
    "line one &amp;\nline two <tag> &amp;\nline three &amp;",
    "ＦＵＬＬＷＩＤＴＨ　ｔｅｘｔ", "ＬＯＵＤ　ＮＯＩＳＥＳ", "ﾊﾝｶｸ halfwidth katakana", "Ｕﾀｰﾝ",
    "ﬁsh ﬂower ﬀ ﬃ ﬄ ﬅ ﬆ", "Ĳssel ĳs", "Ǆ ǅ ǆ Ǉ ǈ ǉ Ǌ ǋ ǌ Ǳ ǲ ǳ", "ŉ",
    "ctrl\x00char", "bell\x07and\x08backspace", "del\x7fchar", "bom\ufeffinside", "\ufeffbom first",
    "annotation\ufff9x\ufffay\ufffb", "object\ufffcreplacement", "arabic\u206acontrols\u206f",
    "\x1b[31mred text\x1b[0m", "\x1b[1;32;40mbold green\x1b[m", "escape\x1b alone",
    "rtl\u200fmark and \u200ejoiners\u200d", "tag\U000e0041chars",
    "cafe\u0301", "e\u0301te\u0301", "A\u030angstrom", "n\u0303o", "Zu\u0308rich",
    "\u1100\u1161\u11a8", "ᾳ and α\u0345 ypogegrammeni", "\u0345 alone", "combining\u0300\u0301\u0302",
    "<start_of_text>", "<end_of_text>", "hello <start_of_text> world <end_of_text>",
    "<START_OF_TEXT>", "<start_of_text><end_of_text>", "a<end_of_text>b", "!!<end_of_text>",
    "<start_of_text", "<ſtart_of_text>", "</w>", "hello</w>world",
    "https://www.example.com/path?query=1&b=2#frag", "http://example.org/a_b-c.html",
    "www.google.com", "user@domain.co.uk", "ftp://files.example.net/pub/file.tar.gz",
    "#hashtag #ThrowbackThursday #100DaysOfCode", "@username mentioned you", "#nofilter 📸",
    "def f(x): return x**2 + 1", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "SELECT * FROM users WHERE id = 42;", "<div class=\"x\">hi</div>", "fn main() { println!(\"hi\"); }",
    "x_1 = y_2 * z_3", "snake_case camelCase PascalCase kebab-case", "path/to/file.rs:42:7",
    "\U0001d400\U0001d401 math bold", "ℌ ℑ ℜ ℭ fraktur", "™ ® ©", "° ± × ÷", "µ micro",
    "ǅungla titlecase", "K kelvin sign", "Å angstrom sign", "Ω ohm sign",
    "\ue000 private use", "\U0010fffd plane 16", "\ufffd replacement char",
    "x" * 300,
    "a" * 1000,
    "hello world " * 40,
]

MOJIBAKE = [
    "âœ” No problems", "sÃ³", "voilÃ le travail", "schÃ¶n", "cafÃ© au lait",
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.", "â€œ like this â€�", "Ã la mode",
    "\x80 hello", "Ð¿Ñ€Ð¸Ð²ÐµÑ‚", "ï»¿hello", "&macr;\\_(ã\x83\x84)_/&macr;",
    "Ã¢â‚¬Å“quotedÃ¢â‚¬Â", "ÃºnicoÂ¿", "Ã‰cole", "l'Ã©tÃ©", "naÃ¯ve cafÃ©s â€” rÃ©sumÃ©",
    "Ã¥", "РґРѕР±СЂРѕ", "Ã\xa0 bientÃ´t", "ÐÐ»Ð¸Ð¼Ð¿Ð¸Ð°Ð´Ð°", "ä¸­æ–‡",
    "He said â€˜hiâ€™", "Â£100", "10Â°C", "Ã¶Ã¤Ã¼", "I â™¥ NY",
    "dÃ©jÃ\xa0 vu", "Ã\xa0 la carte", "\x93quoted\x94", "caf\x8e", "pi\x96ata",
    "string with cp437 ΓòÉ", "MÃ¶tley CrÃ¼e", "â€¦and more", "ðŸ˜€ emoji mojibake",
    "unicode \xed\xa0\xbd\xed\xb8\x80", "Ã£ÂÂ",
]


def _ascii_only_cases() -> List[str]:
    # Plain lower-case ASCII, for decode round trips on the Rust side too.
    return [
        "a photo of a dog", "the cat sat on the mat", "hello world", "abc xyz",
        "zebra crossing at night", "one two three", "sunset over the ocean",
    ]


def all_cases() -> List[Tuple[str, bool]]:
    texts: List[Tuple[str, bool]] = []
    for t in CAPTIONS + _ascii_only_cases():
        texts.append((t, False))
    # prompts: every class name once, cycling through the templates
    for i, name in enumerate(IMAGENET_ISH):
        texts.append((TEMPLATES[i % len(TEMPLATES)].format(name), False))
    for t in LONG_TEXTS + SPECIAL:
        texts.append((t, False))
    for t in MOJIBAKE:
        texts.append((t, True))
    seen = set()
    out = []
    for t, m in texts:
        if t not in seen:
            seen.add(t)
            out.append((t, m))
    return out


def versions() -> Dict[str, str]:
    import ftfy
    import open_clip
    import regex

    return {
        "python": platform.python_version(),
        "unicodedata": unicodedata.unidata_version,
        "open_clip": open_clip.__version__,
        "ftfy": ftfy.__version__,
        "regex": regex.__version__,
    }


def write_case_lines(path: pathlib.Path, obj: dict) -> None:
    """Writes `obj` as JSON with one list item per line: readable diffs, a small file."""
    lines = ["{"]
    for i, (k, v) in enumerate(obj.items()):
        sep = "," if i + 1 < len(obj) else ""
        if isinstance(v, list):
            items = [json.dumps(x, ensure_ascii=True, separators=(",", ":")) for x in v]
            lines.append(f" {json.dumps(k)}: [")
            lines.extend(f"  {it}{',' if j + 1 < len(items) else ''}" for j, it in enumerate(items))
            lines.append(f" ]{sep}")
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=True)}{sep}")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == obj
    path.write_text(text, encoding="utf-8")


def main(out_dir: pathlib.Path) -> None:
    import ftfy
    from open_clip.tokenizer import SimpleTokenizer

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = SimpleTokenizer()
    cases = []
    for text, moji in all_cases():
        ids = tok([text], context_length=CONTEXT_LENGTH)[0].tolist()
        case = {"text": text, "ids": ids}
        # "mojibake": the MOJIBAKE list, plus any other case that ftfy's heuristic encoding
        # repair (fix_encoding) changes, so the flag stays honest.
        if moji or ftfy.fix_encoding(text) != text:
            case["mojibake"] = True
        cases.append(case)
    encode_cases = []
    for text in ["a photo of a dog", "İstanbul", "🇺🇸🇫🇷", "word " * 100, "&amp;amp;", "x_1 = y_2"]:
        encode_cases.append({"text": text, "ids": tok.encode(text)})
    decode_cases = []
    for ids in [
        tok.encode("a photo of a dog."),
        tok.encode("İstanbul naïve café 😀 日本"),
        [49406] + tok.encode("hello world") + [49407],
        [tok.encode("😀")[0]],  # a lone byte-level token: invalid UTF-8 -> U+FFFD
        tok.encode("don't stop"),
    ]:
        decode_cases.append({"ids": ids, "text": tok.decode(ids)})
    obj = {
        "reference": "open_clip.tokenizer.SimpleTokenizer",
        "versions": versions(),
        "context_length": CONTEXT_LENGTH,
        "vocab_size": tok.vocab_size,
        "cases": cases,
        "encode_cases": encode_cases,
        "decode_cases": decode_cases,
    }
    path = out_dir / "clip_tokenizer.json"
    write_case_lines(path, obj)
    n_moji = sum(1 for c in cases if c.get("mojibake"))
    print(f"wrote {path}: {len(cases)} cases ({n_moji} mojibake)")
    hf_main(out_dir)


# ----------------------------------------------------------------------------
# transformers' CLIPTokenizer (the rules of transformers-layout checkpoints)
# ----------------------------------------------------------------------------

# Texts on which transformers' CLIPTokenizer and open_clip's SimpleTokenizer disagree: HTML is
# not unescaped at all (open_clip: twice), there is no ftfy repair (ligatures, mojibake, curly
# quotes), only NFC + whitespace collapse + lower-casing, and the special-token strings in the
# text are the special tokens.
HF_SPECIAL = [
    "Tom &amp;amp; Jerry", "Tom &amp; Jerry", "fish &lt;3 chips", "\ufb01 ligature", "caf\u00e9 vs cafe\u0301",
    "a <|endoftext|> token", "<|startoftext|>start", "two <|endoftext|><|endoftext|> ends",
    "<start_of_text> is open_clip's", "ALL CAPS \u0130STANBUL", "tabs\tand\nnew  lines",
    "\u201ccurly quotes\u201d", "\uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48", "\u00a0nbsp\u3000ideographic space",
    "emoji \U0001f600 and flags \U0001f1fa\U0001f1f8", "",
]


def hf_tokenizer():
    """transformers' CLIPTokenizer (tokenizers-backed) with OpenAI's vocabulary: what
    `CLIPTokenizer.from_pretrained("openai/clip-vit-base-patch32")` gives, built offline from
    open_clip's copy of the same BPE file."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    oc = SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(k, k): v for k, v in oc.encoder.items()}
    merges = [(a, b) for (a, b), _ in sorted(oc.bpe_ranks.items(), key=lambda kv: kv[1])]
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = CONTEXT_LENGTH
    return tok


def hf_main(out_dir: pathlib.Path) -> None:
    """Writes <out_dir>/hf_clip_tokenizer.json (ids of transformers' CLIPTokenizer, padded /
    truncated to 77 as `CLIPProcessor(padding="max_length", truncation=True)` does) and
    <out_dir>/hf_tokenizer.json.gz (its tokenizer.json, gzip without a timestamp)."""
    import gzip

    import transformers

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = hf_tokenizer()
    texts = [t for t, _ in all_cases()] + [t for t in HF_SPECIAL if t not in {c for c, _ in all_cases()}]
    enc = tok(texts, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True)["input_ids"]
    cases = [{"text": t, "ids": ids} for t, ids in zip(texts, enc)]
    obj = {
        "reference": "transformers.CLIPTokenizer (tokenizers backend), padding=max_length, truncation",
        "versions": {**versions(), "transformers": transformers.__version__,
                     "tokenizers": __import__("tokenizers").__version__},
        "context_length": CONTEXT_LENGTH,
        "pad_token_id": tok.pad_token_id,
        "cases": cases,
    }
    path = out_dir / "hf_clip_tokenizer.json"
    write_case_lines(path, obj)
    blob = tok.backend_tokenizer.to_str(pretty=False).encode("utf-8")
    (out_dir / "hf_tokenizer.json.gz").write_bytes(gzip.compress(blob, compresslevel=9, mtime=0))
    print(f"wrote {path}: {len(cases)} cases; hf_tokenizer.json.gz ({len(blob)} bytes raw)")


# ----------------------------------------------------------------------------
# Rust tables (--rust-tables)
# ----------------------------------------------------------------------------

def _ranges(cps: List[int]) -> List[Tuple[int, int]]:
    out: List[List[int]] = []
    for c in sorted(set(cps)):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return [(a, b) for a, b in out]


def _class_body(cps: List[int]) -> str:
    """A Rust regex character-class body (no brackets) for exactly these code points."""
    parts = []
    for a, b in _ranges(cps):
        parts.append(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}")
    return "".join(parts)


def _rs_str(s: str) -> str:
    out = []
    for ch in s:
        c = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif 0x20 <= c < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\u{{{c:x}}}")
    return '"' + "".join(out) + '"'


def _wrap(items: List[str], indent: str = "    ", width: int = 96) -> str:
    lines, cur = [], indent
    for it in items:
        piece = it + ", "
        if len(cur) + len(piece) > width and cur.strip():
            lines.append(cur.rstrip())
            cur = indent
        cur += piece
    if cur.strip():
        lines.append(cur.rstrip())
    return "\n".join(lines)


def _all_codepoints():
    for c in range(0x110000):
        if 0xD800 <= c < 0xE000:
            continue
        yield c


def _class_cps(pattern_class: str) -> List[int]:
    import re

    rx = re.compile(pattern_class)
    return [c for c in _all_codepoints() if rx.fullmatch(chr(c))]


def rust_tables() -> str:
    import re

    import ftfy
    import ftfy.bad_codecs  # noqa: F401  (registers the sloppy codecs)
    import regex
    from ftfy import badness, chardata

    out: List[str] = []
    w = out.append
    w("// @generated by tools/reference/gen_tokenizer.py --rust-tables. Do not edit by hand.")
    w(f"// Reference environment: {json.dumps(versions(), sort_keys=True)}")
    w("#![allow(clippy::all)]")
    w("")

    # --- html.unescape (html.entities.html5) ---------------------------------------
    ents = sorted(html.entities.html5.items(), key=lambda kv: kv[0].encode())
    w("/// Python's `html.entities.html5`: name (with its `;` where it has one) -> text, sorted by name.")
    w("pub(super) static HTML5_ENTITIES: &[(&str, &str)] = &[")
    w(_wrap([f"({_rs_str(k)}, {_rs_str(v)})" for k, v in ents]))
    w("];")
    upper = sorted(
        ((k, v) for k, v in chardata.HTML_ENTITIES.items() if k[1:] not in html.entities.html5),
        key=lambda kv: kv[0].encode(),
    )
    w("/// ftfy's extra all-caps entities (`&EACUTE;`), with `&` and `;`, sorted.")
    w("pub(super) static FTFY_UPPER_ENTITIES: &[(&str, &str)] = &[")
    w(_wrap([f"({_rs_str(k)}, {_rs_str(v)})" for k, v in upper]))
    w("];")
    w("/// Python's `html._invalid_charrefs`.")
    w("pub(super) static HTML_INVALID_CHARREFS: &[(u32, &str)] = &[")
    w(_wrap([f"({k}, {_rs_str(v)})" for k, v in sorted(html._invalid_charrefs.items())]))
    w("];")
    w("/// Python's `html._invalid_codepoints`, sorted.")
    w("pub(super) static HTML_INVALID_CODEPOINTS: &[u32] = &[")
    w(_wrap([f"0x{c:X}" for c in sorted(html._invalid_codepoints)]))
    w("];")

    # --- single-byte codecs ---------------------------------------------------------
    w("/// ftfy's CHARMAP_ENCODINGS, in order: (name, byte -> char decoding table).")
    w(f"pub(super) static CHARMAPS: [(&str, [char; 256]); {len(chardata.CHARMAP_ENCODINGS)}] = [")
    for enc in chardata.CHARMAP_ENCODINGS:
        table = bytes(range(256)).decode(enc)
        assert len(set(table)) == 256
        w(f"    ({_rs_str(enc)}, [")
        w(_wrap([f"'\\u{{{ord(ch):x}}}'" for ch in table], indent="        "))
        w("    ]),")
    w("];")
    undefined = []
    for b in range(256):
        try:
            bytes([b]).decode("windows-1252")
        except UnicodeDecodeError:
            undefined.append(b)
    w("/// Bytes the strict `windows-1252` codec cannot decode.")
    w(f"pub(super) static WINDOWS_1252_UNDEFINED: &[u8] = &[{', '.join(f'0x{b:02X}' for b in undefined)}];")

    # --- translate tables -------------------------------------------------------------
    w("/// ftfy's WIDTH_MAP (fix_character_width), sorted.")
    w("pub(super) static WIDTH_MAP: &[(char, &str)] = &[")
    w(_wrap([f"('\\u{{{k:x}}}', {_rs_str(v)})" for k, v in sorted(chardata.WIDTH_MAP.items())]))
    w("];")
    w("/// ftfy's LIGATURES (fix_latin_ligatures), sorted.")
    w("pub(super) static LIGATURES: &[(char, &str)] = &[")
    w(_wrap([f"('\\u{{{k:x}}}', {_rs_str(v)})" for k, v in sorted(chardata.LIGATURES.items())]))
    w("];")
    w("/// ftfy's CONTROL_CHARS (remove_control_chars), as a regex class body.")
    w(f"pub(super) const CONTROL_CHARS: &str = {_rs_str(_class_body(list(chardata.CONTROL_CHARS)))};")

    # --- badness / UTF-8 clue classes (regex class bodies) ----------------------------
    w("// ftfy.badness.MOJIBAKE_CATEGORIES, as regex class bodies.")
    for name, chars in badness.MOJIBAKE_CATEGORIES.items():
        cps = _class_cps("[" + chars + "]")
        w(f"pub(super) const MOJI_{name.upper()}: &str = {_rs_str(_class_body(cps))};")
    w("// ftfy.chardata.UTF8_CLUES, as regex class bodies.")
    for name, chars in chardata.UTF8_CLUES.items():
        cps = _class_cps("[" + chars + "]")
        w(f"pub(super) const {name.upper()}: &str = {_rs_str(_class_body(cps))};")
    w("/// Python `re`'s `\\w` (str.isalnum() or '_'), as a regex class body.")
    word = _class_body(_class_cps(r"\w"))
    w(f"pub(super) const PY_RE_WORD: &str = {_rs_str(word)};")

    # --- the tokenizer regex's classes (the `regex` module, IGNORECASE) ---------------
    pat = regex.compile(
        r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|([\p{L}]+)|([\p{N}])|([^\s\p{L}\p{N}]+)""",
        regex.IGNORECASE,
    )
    letters, numbers, other, skipped = [], [], [], []
    for c in _all_codepoints():
        m = pat.match(chr(c))
        if m is None:
            skipped.append(c)
        elif m.group(1):
            letters.append(c)
        elif m.group(2):
            numbers.append(c)
        else:
            other.append(c)
    w("/// Code points the reference's `[\\p{L}]+` (regex module, IGNORECASE) matches.")
    w(f"pub(super) const TOKEN_LETTERS: &str = {_rs_str(_class_body(letters))};")
    w("/// Code points the reference's `[\\p{N}]` matches.")
    w(f"pub(super) const TOKEN_NUMBERS: &str = {_rs_str(_class_body(numbers))};")
    w("/// Code points no alternative of the reference pattern matches (dropped by findall).")
    w(f"pub(super) const TOKEN_SKIPPED: &str = {_rs_str(_class_body(skipped))};")

    # --- str.lower() --------------------------------------------------------------------
    lower = []
    for c in _all_codepoints():
        lo = chr(c).lower()
        if lo != chr(c) and c != 0x3A3:
            lower.append((c, lo))
    w("/// Python's str.lower() for every code point it changes (except U+03A3, final sigma), sorted.")
    w("pub(super) static PY_LOWER: &[(char, &str)] = &[")
    w(_wrap([f"('\\u{{{c:x}}}', {_rs_str(v)})" for c, v in lower]))
    w("];")
    # Cased / Case_Ignorable as Python's unicodedata sees them, derived from its
    # final-sigma rule: lower('AΣ' + x) and lower('AΣ' + x + 'A').
    cased, ignorable = [], []
    for c in _all_codepoints():
        x = chr(c)
        f1 = ("A\u03a3" + x).lower()[1]
        f2 = ("A\u03a3" + x + "A").lower()[1]
        if f1 == "\u03c3":
            cased.append(c)  # cased and not case-ignorable
        elif f2 == "\u03c3":
            ignorable.append(c)
    w("/// Cased (and not Case_Ignorable) code points per Python's unicodedata.")
    w(f"pub(super) const PY_CASED: &str = {_rs_str(_class_body(cased))};")
    w("/// Case_Ignorable code points per Python's unicodedata.")
    w(f"pub(super) const PY_CASE_IGNORABLE: &str = {_rs_str(_class_body(ignorable))};")
    w("/// str.isspace() code points (str.split(), str.strip(), re's `\\s`).")
    space = _class_body([c for c in _all_codepoints() if chr(c).isspace()])
    w(f"pub(super) const PY_SPACE: &str = {_rs_str(space)};")
    unassigned = _class_body([c for c in _all_codepoints() if unicodedata.category(chr(c)) == "Cn"])
    w("/// Code points unassigned in the reference's unicodedata (inert starters for its NFC).")
    w(f"pub(super) const PY_UNASSIGNED: &str = {_rs_str(unassigned)};")
    w("")
    return "\n".join(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="fixture directory")
    ap.add_argument("--rust-tables", action="store_true", help=f"regenerate {TABLES_RS.relative_to(REPO_ROOT)}")
    args = ap.parse_args()
    if args.rust_tables:
        TABLES_RS.parent.mkdir(parents=True, exist_ok=True)
        TABLES_RS.write_text(rust_tables(), encoding="utf-8")
        print(f"wrote {TABLES_RS}")
    else:
        main(args.out)
