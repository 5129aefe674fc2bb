"""Canonical class lists (folder/label order) and the readable names used in prompts.

Readable names follow OpenAI CLIP's zero-shot notebooks / LAION's
CLIP_benchmark where those differ from the folder names (e.g. Caltech-101's
``Faces`` → "off-center face", EuroSAT's ``SeaLake`` → "lake or sea"), so
that zero-shot numbers are comparable to published ones.  ImageNet's long
lists live in :mod:`alignbench.datasets.imagenet_classes`.
"""
from __future__ import annotations

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# CIFAR-100 fine labels in label order (as in the ``meta`` file); prompts use spaces for "_".
CIFAR100 = """
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree
pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea
seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table
tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman
worm
""".split()

STL10 = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]

# Fashion-MNIST labels 0-9 (official: T-shirt/top, Trouser, Pullover, Dress, Coat,
# Sandal, Shirt, Sneaker, Bag, Ankle boot), written as a noun a prompt can take.
FASHION_MNIST = ["t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]

EUROSAT_FOLDERS = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
                   "Pasture", "PermanentCrop", "Residential", "River", "SeaLake"]
EUROSAT = ["annual crop land", "forest", "brushland or shrubland", "highway or road",
           "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
           "residential buildings or homes or apartments", "river", "lake or sea"]

# Caltech-101 category folders (sorted, BACKGROUND_Google dropped: it is clutter, not a class).
CALTECH101_FOLDERS = """
Faces Faces_easy Leopards Motorbikes accordion airplanes anchor ant barrel bass beaver binocular bonsai
brain brontosaurus buddha butterfly camera cannon car_side ceiling_fan cellphone chair chandelier
cougar_body cougar_face crab crayfish crocodile crocodile_head cup dalmatian dollar_bill dolphin
dragonfly electric_guitar elephant emu euphonium ewer ferry flamingo flamingo_head garfield gerenuk
gramophone grand_piano hawksbill headphone hedgehog helicopter ibis inline_skate joshua_tree kangaroo
ketch lamp laptop llama lobster lotus mandolin mayfly menorah metronome minaret nautilus octopus okapi
pagoda panda pigeon pizza platypus pyramid revolver rhino rooster saxophone schooner scissors scorpion
sea_horse snoopy soccer_ball stapler starfish stegosaurus stop_sign strawberry sunflower tick trilobite
umbrella watch water_lilly wheelchair wild_cat windsor_chair wrench yin_yang
""".split()
_CALTECH101_RENAMES = {
    "Faces": "off-center face", "Faces_easy": "centered face", "Leopards": "leopard",
    "Motorbikes": "motorbike", "airplanes": "airplane", "car_side": "side of a car",
    "cougar_body": "body of a cougar cat", "cougar_face": "face of a cougar cat",
    "crocodile_head": "head of a crocodile", "flamingo_head": "head of a flamingo",
    "snoopy": "snoopy (cartoon beagle)", "yin_yang": "yin and yang symbol",
}
CALTECH101 = [_CALTECH101_RENAMES.get(f, f.replace("_", " ")) for f in CALTECH101_FOLDERS]

DTD = """
banded blotchy braided bubbly bumpy chequered cobwebbed cracked crosshatched crystalline dotted fibrous
flecked freckled frilly gauzy grid grooved honeycombed interlaced knitted lacelike lined marbled matted
meshed paisley perforated pitted pleated polka-dotted porous potholed scaly smeared spiralled sprinkled
stained stratified striped studded swirly veined waffled woven wrinkled zigzagged
""".split()

CAMVID = ["sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car",
          "pedestrian", "bicyclist"]

VOC = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
       "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
       "train", "tv monitor"]

# Pascal Context, 59 most frequent classes (label 0 "background" ignored), as in mmsegmentation.
PASCAL_CONTEXT59 = """
aeroplane|bag|bed|bedclothes|bench|bicycle|bird|boat|book|bottle|building|bus|cabinet|car|cat|ceiling|
chair|cloth|computer|cow|cup|curtain|dog|door|fence|floor|flower|food|grass|ground|horse|keyboard|
light|motorbike|mountain|mouse|person|plate|platform|potted plant|road|rock|sheep|shelves|sidewalk|
sign|sky|snow|sofa|table|track|train|tree|truck|tv monitor|wall|water|window|wood
""".replace("\n", "").split("|")

# ADE20K SceneParsing 150 classes (objectInfo150 order; first name of each entry).
ADE20K = """
wall|building|sky|floor|tree|ceiling|road|bed|windowpane|grass|cabinet|sidewalk|person|earth|door|
table|mountain|plant|curtain|chair|car|water|painting|sofa|shelf|house|sea|mirror|rug|field|armchair|
seat|fence|desk|rock|wardrobe|lamp|bathtub|railing|cushion|base|box|column|signboard|
chest of drawers|counter|sand|sink|skyscraper|fireplace|refrigerator|grandstand|path|stairs|runway|
case|pool table|pillow|screen door|stairway|river|bridge|bookcase|blind|coffee table|toilet|flower|
book|hill|bench|countertop|stove|palm|kitchen island|computer|swivel chair|boat|bar|arcade machine|
hovel|bus|towel|light|truck|tower|chandelier|awning|streetlight|booth|television receiver|airplane|
dirt track|apparel|pole|land|bannister|escalator|ottoman|bottle|buffet|poster|stage|van|ship|
fountain|conveyer belt|canopy|washer|plaything|swimming pool|stool|barrel|basket|waterfall|tent|bag|
minibike|cradle|oven|ball|food|step|tank|trade name|microwave|pot|animal|bicycle|lake|dishwasher|
screen|blanket|sculpture|hood|sconce|vase|traffic light|tray|ashcan|fan|pier|crt screen|plate|
monitor|bulletin board|shower|radiator|glass|clock|flag
""".replace("\n", "").split("|")

_SIZES = {"CIFAR100": (CIFAR100, 100), "CALTECH101": (CALTECH101, 101), "DTD": (DTD, 47),
          "PASCAL_CONTEXT59": (PASCAL_CONTEXT59, 59), "ADE20K": (ADE20K, 150)}
for _name, (_lst, _n) in _SIZES.items():
    assert len(_lst) == _n, f"{_name} has {len(_lst)} names, expected {_n}"
