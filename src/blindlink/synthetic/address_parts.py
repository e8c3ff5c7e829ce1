"""Invented street names, street types and towns (with postcodes) for synthetic addresses.

The towns are fictional; postcodes are unique 4-digit codes, one per town. Towns are listed
roughly from largest to smallest, and population draws weight them by that rank.
"""


def _items(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.replace("\n", ",").split(",") if item.strip())


STREET_NAMES: tuple[str, ...] = _items(
    """
    Acacia, Banksia, Wattle, Waratah, Grevillea, Boronia, Bottlebrush, Ironbark, Stringybark,
    Blackwood, Myrtle, Laurel, Jacaranda, Magnolia, Camellia, Wisteria, Lavender, Rosemary,
    Juniper, Cedar, Willow, Birch, Elm, Oak, Ash, Maple, Poplar, Aspen, Hawthorn, Holly, Ivy,
    Fern, Heather, Hazel, Olive, Linden, Sycamore, Cypress, Pine, Spruce, Larch, Rowan, Alder,
    Beech, Chestnut, Walnut, Almond, Quince, Plum, Cherry, Fig, Mulberry, Bramble, Thistle,
    Clover, Daisy, Poppy, Tulip, Iris, Lily, Violet, Jasmine, Hibiscus, Frangipani, Gardenia,
    Azalea, Protea, Kurrajong, Coolabah, Tea Tree, Paperbark, Redgum, Bluegum, Casuarina,
    Sheoak, Melaleuca, Lilly Pilly, Saltbush, Spinifex, Kookaburra, Rosella, Lorikeet, Galah,
    Magpie, Wren, Robin, Finch, Swallow, Heron, Egret, Pelican, Ibis, Plover, Curlew, Kestrel,
    Falcon, Osprey, Eagle, Lyrebird, Bellbird, Currawong, Cockatoo, Kingfisher, Lark, Sparrow,
    Swift, Dove, Pardalote, Whipbird, Jabiru, Brolga, Cormorant, Tern, Gannet, Albatross,
    Petrel, Oriole, Albert, Victoria, George, Elizabeth, William, Edward, Charles, Alfred,
    Frederick, Henry, Arthur, Herbert, Walter, Stanley, Ernest, Harold, Leonard, Bernard,
    Gordon, Douglas, Murray, Campbell, Hunter, Phillip, Collins, Flinders, Sturt, Hume,
    Mitchell, Kennedy, Burke, Oxley, Lawson, Paterson, Wentworth, Forrest, Stirling, Todd,
    Stuart, Darling, Bourke, Denison, Fitzroy, Hotham, Lonsdale, Russell, Spencer, Bowen,
    Sussex, York, Clarence, Pitt, Market, King, Queen, Prince, Princess, Regent, Duke, Earl,
    High, Main, Church, Station, Railway, School, Mill, Bridge, River, Creek, Lake, Hill,
    Valley, Ridge, Park, Garden, Beach, Bay, Harbour, Ocean, Cliff, Cove, Point, Spring,
    Brook, Meadow, Field, Forest, Glen, Dale, Vale, Heath, Moor, Marsh, Summit, Crest, View,
    Vista, Sunset, Sunrise, Horizon, Highland, Island, Headland, Quarry, Wharf, Jetty, Pier,
    Canal, Ferry, Ford, Well, Fountain, Tower, Castle, Abbey, Chapel, Cathedral, Manor, Hall,
    Lodge, Cottage, Barn, Farm, Dairy, Pasture, Paddock, Stockyard, Homestead, Boundary,
    Junction, Crossing, Gateway, Mount Pleasant, Fairview, Bellevue, Greenhill, Westbury,
    Eastwood, Northcote, Southgate, Highfield, Woodland, Riverside, Lakeside, Seaview,
    Bayview, Hillcrest, Oakwood, Elmwood, Pinehurst, Ashford, Oxford, Cambridge, Windsor,
    Hampton, Kensington, Chelsea, Richmond, Clifton, Carlton, Preston, Milton, Newton, Ashton,
    Burton, Dalton, Fulton, Hamilton, Kingston, Langley, Morton, Norton, Sutton, Warwick,
    Wellington, Nelson, Canterbury, Durham, Lancaster, Chester, Exeter, Bristol, Devon,
    Cornwall, Dorset, Somerset, Suffolk, Norfolk, Essex, Surrey, Kent, Bedford, Buckingham,
    Derby, Hereford, Lincoln, Stafford, Worcester, Waverley, Rosedale, Glenview, Brookside,
    Fernhill, Stonehaven, Hollybank, Wildflower, Bluebell, Buttercup, Honeysuckle, Marigold,
    Primrose, Snowdrop, Sandstone, Bluestone, Granite, Flint, Basalt, Quartz, Opal, Emerald,
    Sapphire, Coral, Amber, Pearl, Silver, Copper, Golden, Harvest, Wheatfield, Barley,
    Vineyard, Orchard, Windmill, Watermill, Lighthouse, Anchor, Compass, Mariner, Voyager,
    Endeavour, Discovery, Resolution, Federation, Jubilee, Coronation, Centenary, Anzac,
    Memorial, Heritage, Pioneer, Settlers, Drovers, Shearers, Miners, Coachman, Carriage
    """
)

# Common types repeat so that a uniform draw favours them, as in real street directories.
STREET_TYPES: tuple[str, ...] = _items(
    """
    Street, Street, Street, Street, Street, Street, Road, Road, Road, Road, Avenue, Avenue,
    Avenue, Drive, Drive, Lane, Court, Court, Place, Place, Crescent, Close, Parade, Way,
    Terrace, Grove, Boulevard, Circuit, Highway, Esplanade, Rise, Walk, Square
    """
)


def _town(item: str) -> tuple[str, str]:
    name, _, postcode = item.rpartition(" ")
    return name, postcode


TOWNS: tuple[tuple[str, str], ...] = tuple(
    _town(item)
    for item in _items(
        """
        Port Halloran 2100, Kingsbridge 3150, Ashvale 4105, Merriwood 5045, Westhaven 6020,
        Bellbrook 2250, Riverton 3220, Glenmore 2310, Stonyford 3340, Millbank 4210,
        Wattle Creek 2417, Cedar Flats 3412, Harrowgate 5120, Northbury 2560, Eastmere 3530,
        Southwold 4350, Copper Hill 6150, Larkspur 2620, Fernleigh 3610, Oakhurst 2680,
        Brindle Bay 4410, Tallowood 2720, Greystone 3690, Mossvale 5210, Kestrel Point 6230,
        Highcombe 2790, Lowther 3720, Marlow Heights 2810, Pebble Beach 4520, Redbank 3780,
        Coolinga 2850, Yarrowdale 3810, Brookhaven 5250, Silverton Ridge 2870, Dunmore 3850,
        Ironbark Springs 4610, Haverley 2890, Windham 3870, Corella Downs 6320, Thornbury 2920,
        Emerald Gully 3890, Saltwater Cove 4680, Mulgrave Park 2940, Lindenfield 3910,
        Barrowvale 5320, Honeysuckle Flat 2960, Pelican Head 4720, Gumtree Hollow 3930,
        Ashby Downs 2980, Rosewater 5370, Wyndarra 3950, Quarry Hill 2990, Beacon Heights 6410,
        Ferndale 3960, Kookaburra Creek 4750, Whitmore 2330, Blackwater 4790, Merrigum 3970,
        Stillwater 2340, Hollowbrook 5410, Tern Island 6450, Castleford 2350, Gilbey 3980,
        Orchard Vale 4810, Willowmere 2360, Brampton Rise 5440, Coral Bay 6510, Tambalong 2370,
        Eagle Rock 3990, Sandhurst 4840, Hartwell 2380, Lakemba Springs 5460, Carraway 2390,
        Bluegum Ridge 3450, Drover's Rest 4860, Pennyroyal 2395, Minnamurra Flat 5470,
        Jarrah Hills 6560, Fairhaven 2405, Oldcastle 3460, Goldfields 4880, Marsden Vale 2420,
        Kurrajong Plains 5480, Wirrabilla 3470, Heathcote Bend 2430, Mariner's Reach 4890,
        Strathmore 3480, Banksia Grove 6580, Timberlea 2440, Woolpack 5490, Gannet Bay 4895,
        Eskdale 3490, Quandong 5495, Tindal Creek 2445, Bramblewood 3495, Lyrebird Gully 4898,
        Shearwater 6590, Coachman's Crossing 2448, Saddleback 3497,
        Tarrawong Flat 2460
        """
    )
)
