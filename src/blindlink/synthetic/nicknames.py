"""Interchangeable given-name forms (nicknames and spelling variants), per sex.

Each line is a group of forms a person may be recorded under; any member can stand in for any
other, so "Robert" may become "Bob" and "Bob" may become "Robert".
"""

from collections import defaultdict

_MALE_GROUPS = """
Robert Bob Rob Bobby Robbie
William Bill Will Billy Willie Liam
James Jim Jimmy Jamie
John Jack Johnny Jon
Jonathan Jon Jonny
Michael Mike Mick Mikey
Richard Rick Dick Rich Richie
Thomas Tom Tommy
Charles Charlie Chuck Chas
Christopher Chris Kit
Daniel Dan Danny
Matthew Matt
Anthony Tony
Joseph Joe Joey
David Dave Davey
Andrew Andy Drew
Edward Ed Eddie Ted Ned
Steven Stephen Steve
Kenneth Ken Kenny
Joshua Josh
Benjamin Ben Benny
Samuel Sam Sammy
Alexander Alex Sandy
Nicholas Nick Nicky
Timothy Tim Timmy
Patrick Pat Paddy
Peter Pete
Gregory Greg
Raymond Ray
Lawrence Larry Laurie
Gerald Gerry Jerry
Donald Don Donnie
Ronald Ron Ronnie
Douglas Doug
Frederick Fred Freddie
Henry Harry Hank
Harold Harry Hal
Francis Frank Frankie
Albert Al Bert
Alfred Alf Fred
Leonard Len Lenny
Phillip Philip Phil
Jeffrey Jeff Geoffrey
Zachary Zach
Nathaniel Nate
Walter Wally
Eugene Gene
Theodore Theo Ted
Vincent Vince
Terrence Terry
Stanley Stan
Gabriel Gabe
Mitchell Mitch
Jacob Jake
Maxwell Max
Oliver Ollie
Cameron Cam
Bradley Brad
"""

_FEMALE_GROUPS = """
Elizabeth Liz Beth Betty Eliza Lizzie Libby
Katherine Catherine Kate Kathy Katie Kat
Kathleen Kathy Kath
Margaret Maggie Peggy Meg Marge
Mary Molly Polly Mae
Jennifer Jen Jenny
Patricia Pat Patty Trish
Susan Sue Suzy
Suzanne Sue Suzy
Deborah Debbie Deb
Rebecca Becky Becca
Jessica Jess Jessie
Victoria Vicky Tori
Christine Chris Chrissy
Christina Tina Chris
Samantha Sam Sammy
Alexandra Alex Lexie
Abigail Abby
Dorothy Dot Dottie
Barbara Barb Babs
Judith Judy
Pamela Pam
Cynthia Cindy
Theresa Teresa Terri Tess
Jacqueline Jackie
Kimberly Kim
Stephanie Steph
Melissa Mel Missy
Melanie Mel
Amanda Mandy
Nicole Nikki
Angela Angie
Frances Fran Frankie
Josephine Jo Josie
Joanne Jo
Gabrielle Gabby
Eleanor Ellie Nell
Natalie Nat
Penelope Penny
Valerie Val
Virginia Ginny
Ann Anne Annie
Sarah Sara Sally
Madeline Madeleine Maddie
Caroline Carrie
Allison Alison Ally
Danielle Dani
Veronica Ronnie
"""


def _variants(groups: str) -> dict[str, tuple[str, ...]]:
    variants: defaultdict[str, set[str]] = defaultdict(set)
    for line in groups.strip().splitlines():
        names = line.split()
        for name in names:
            variants[name].update(other for other in names if other != name)
    # Sorted so that a seeded draw picks the same variant on every run.
    return {name: tuple(sorted(others)) for name, others in variants.items()}


MALE_VARIANTS: dict[str, tuple[str, ...]] = _variants(_MALE_GROUPS)
FEMALE_VARIANTS: dict[str, tuple[str, ...]] = _variants(_FEMALE_GROUPS)
