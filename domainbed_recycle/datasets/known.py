"""What DomainBed's five real datasets hold once its download script has run: domain folders, class
folders and image counts, to check a user's copy against (`datasets.check`, `drecycle data check`).

Sources (facts, not code): DomainBed's paper (Gulrajani and Lopez-Paz, ICLR 2021, Table 1: total images
per dataset) and its repository (`domainbed/scripts/download.py` for the folder layout and
TerraIncognita's classes; `domainbed/misc/vlcs_files.txt` lists every VLCS image; DomainNet's counts are
the "cleaned" release's, which DomainBed's download gives after deleting the files listed in
`domainbed/misc/domain_net_duplicates.txt`). TerraIncognita's per-location counts are not published
there, so only its total is checked.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Known:
    """A dataset as DomainBed's download leaves it.

    total: images over all domains; per_domain: {domain folder: images} (None where not published);
    classes: class folder names, as sorted by `sorted()` (ImageFolder's order).
    """

    total: int
    per_domain: dict[str, int | None]
    classes: tuple[str, ...]


def _names(text: str) -> tuple[str, ...]:
    return tuple(sorted(text.split()))


KNOWN = {
    "PACS": Known(9991, {"art_painting": 2048, "cartoon": 2344, "photo": 1670, "sketch": 3929},
                  _names("dog elephant giraffe guitar horse house person")),
    "VLCS": Known(10729, {"Caltech101": 1415, "LabelMe": 2656, "SUN09": 3282, "VOC2007": 3376},
                  _names("bird car chair dog person")),
    "OfficeHome": Known(15588, {"Art": 2427, "Clipart": 4365, "Product": 4439, "Real World": 4357}, _names("""
        Alarm_Clock Backpack Batteries Bed Bike Bottle Bucket Calculator Calendar Candles Chair Clipboards
        Computer Couch Curtains Desk_Lamp Drill Eraser Exit_Sign Fan File_Cabinet Flipflops Flowers Folder
        Fork Glasses Hammer Helmet Kettle Keyboard Knives Lamp_Shade Laptop Marker Monitor Mop Mouse Mug
        Notebook Oven Pan Paper_Clip Pen Pencil Postit_Notes Printer Push_Pin Radio Refrigerator Ruler
        Scissors Screwdriver Shelf Sink Sneakers Soda Speaker Spoon TV Table Telephone ToothBrush Toys
        Trash_Can Webcam
    """)),
    "TerraIncognita": Known(24788, {"location_100": None, "location_38": None, "location_43": None,
                                     "location_46": None},
                            _names("bird bobcat cat coyote dog empty opossum rabbit raccoon squirrel")),
    "DomainNet": Known(586575, {"clipart": 48129, "infograph": 51605, "painting": 72266, "quickdraw": 172500,
                                "real": 172947, "sketch": 69128}, _names("""
        aircraft_carrier airplane alarm_clock ambulance angel animal_migration ant anvil apple arm
        asparagus axe backpack banana bandage barn baseball baseball_bat basket basketball bat bathtub
        beach bear beard bed bee belt bench bicycle binoculars bird birthday_cake blackberry blueberry book
        boomerang bottlecap bowtie bracelet brain bread bridge broccoli broom bucket bulldozer bus bush
        butterfly cactus cake calculator calendar camel camera camouflage campfire candle cannon canoe car
        carrot castle cat ceiling_fan cello cell_phone chair chandelier church circle clarinet clock cloud
        coffee_cup compass computer cookie cooler couch cow crab crayon crocodile crown cruise_ship cup
        diamond dishwasher diving_board dog dolphin donut door dragon dresser drill drums duck dumbbell ear
        elbow elephant envelope eraser eye eyeglasses face fan feather fence finger fireplace firetruck
        fire_hydrant fish flamingo flashlight flip_flops floor_lamp flower flying_saucer foot fork frog
        frying_pan garden garden_hose giraffe goatee golf_club grapes grass guitar hamburger hammer hand
        harp hat headphones hedgehog helicopter helmet hexagon hockey_puck hockey_stick horse hospital
        hot_air_balloon hot_dog hot_tub hourglass house house_plant hurricane ice_cream jacket jail
        kangaroo key keyboard knee knife ladder lantern laptop leaf leg lighter lighthouse lightning
        light_bulb line lion lipstick lobster lollipop mailbox map marker matches megaphone mermaid
        microphone microwave monkey moon mosquito motorbike mountain mouse moustache mouth mug mushroom
        nail necklace nose ocean octagon octopus onion oven owl paintbrush paint_can palm_tree panda pants
        paper_clip parachute parrot passport peanut pear peas pencil penguin piano pickup_truck
        picture_frame pig pillow pineapple pizza pliers police_car pond pool popsicle postcard potato
        power_outlet purse rabbit raccoon radio rain rainbow rake remote_control rhinoceros rifle river
        rollerskates roller_coaster sailboat sandwich saw saxophone school_bus scissors scorpion
        screwdriver sea_turtle see_saw shark sheep shoe shorts shovel sink skateboard skull skyscraper
        sleeping_bag smiley_face snail snake snorkel snowflake snowman soccer_ball sock speedboat spider
        spoon spreadsheet square squiggle squirrel stairs star steak stereo stethoscope stitches stop_sign
        stove strawberry streetlight string_bean submarine suitcase sun swan sweater swing_set sword
        syringe t-shirt table teapot teddy-bear telephone television tennis_racquet tent The_Eiffel_Tower
        The_Great_Wall_of_China The_Mona_Lisa tiger toaster toe toilet tooth toothbrush toothpaste tornado
        tractor traffic_light train tree triangle trombone truck trumpet umbrella underwear van vase violin
        washing_machine watermelon waterslide whale wheel windmill wine_bottle wine_glass wristwatch yoga
        zebra zigzag
    """)),
}
