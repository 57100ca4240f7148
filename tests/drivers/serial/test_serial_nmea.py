"""NMEA 0183: checksum verification and the GGA, RMC, MWV, XDR, MDA sentences."""

from __future__ import annotations

import pytest

from drivers.api import Quality
from drivers.serial._model import ChecksumError, DecodeError, Field
from drivers.serial.nmea import NmeaDecoder, nmea_checksum, sentence

ALL = ["GGA", "RMC", "MWV", "XDR", "MDA"]
# The classic examples from the NMEA 0183 literature, checksums as published.
GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
RMC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"


def values(fields: list[Field]) -> dict[str, object]:
    return {f.name: f.value for f in fields}


def test_published_checksums_verify() -> None:
    assert nmea_checksum(GGA[1:-3]) == 0x47
    assert nmea_checksum(RMC[1:-3]) == 0x6A


def test_gga_position_fix_and_units() -> None:
    fields = NmeaDecoder(ALL).decode(GGA + b"\r\n")
    assert values(fields) == {"latitude": 48.1173, "longitude": 11.5166667, "fix_quality": 1,
                              "satellites": 8, "hdop": 0.9, "altitude": 545.4}
    assert {f.name: f.unit for f in fields}["latitude"] == "lat"
    assert all(f.quality == Quality.GOOD for f in fields)


def test_gga_without_fix_leaves_position_out() -> None:
    fields = NmeaDecoder(ALL).decode(sentence("GPGGA,123519,,,,,0,00,,,M,,M,,"))
    assert values(fields) == {"fix_quality": 0, "satellites": 0}


def test_southern_western_hemispheres_are_negative() -> None:
    fields = NmeaDecoder(["GGA"]).decode(
        sentence("GNGGA,000000,3351.5000,S,15112.0000,W,1,05,1.2,10.0,M,,M,,"))
    assert values(fields)["latitude"] == -33.8583333
    assert values(fields)["longitude"] == -151.2


def test_rmc_speed_in_metres_per_second_and_position_left_to_gga() -> None:
    assert values(NmeaDecoder(ALL).decode(RMC)) == {
        "fix_valid": True, "speed": 11.524, "course": 84.4}


def test_rmc_gives_position_when_gga_is_not_decoded() -> None:
    got = values(NmeaDecoder(["RMC"]).decode(RMC))
    assert got["latitude"] == 48.1173
    assert got["longitude"] == 11.5166667


def test_rmc_void_fix_has_no_position() -> None:
    got = values(NmeaDecoder(["RMC"]).decode(sentence("GPRMC,123519,V,,,,,,,230394,,")))
    assert got == {"fix_valid": False}


@pytest.mark.parametrize(("unit", "speed", "expected"), [
    ("M", "10.0", 10.0), ("K", "36.0", 10.0), ("N", "10.0", 5.144), ("S", "10.0", 4.47)])
def test_mwv_speed_units(unit: str, speed: str, expected: float) -> None:
    got = values(NmeaDecoder(["MWV"]).decode(sentence(f"IIMWV,045.0,R,{speed},{unit},A")))
    assert got == {"wind_angle_relative": 45.0, "wind_speed_relative": pytest.approx(expected,
                                                                                      abs=0.001)}


def test_mwv_true_reference_has_its_own_points() -> None:
    got = values(NmeaDecoder(["MWV"]).decode(sentence("WIMWV,270.0,T,3.5,M,A")))
    assert got == {"wind_angle_true": 270.0, "wind_speed_true": 3.5}


def test_mwv_status_void_gives_device_error_readings() -> None:
    fields = NmeaDecoder(["MWV"]).decode(sentence("WIMWV,270.0,T,3.5,M,V"))
    assert [(f.name, f.value, f.quality) for f in fields] == [
        ("wind_angle_true", None, Quality.DEVICE_ERROR),
        ("wind_speed_true", None, Quality.DEVICE_ERROR)]


def test_xdr_transducers_named_and_converted() -> None:
    fields = NmeaDecoder(["XDR"]).decode(sentence(
        "WIXDR,C,19.5,C,TempAir,P,1.0132,B,Barometer,H,55.2,P,RelHum,G,7,,,"))
    assert [(f.name, f.value, f.unit) for f in fields] == [
        ("xdr_tempair", 19.5, "Cel"), ("xdr_barometer", 101320.0, "Pa"),
        ("xdr_relhum", 55.2, "%RH"), ("xdr_g3", 7.0, None)]


def test_xdr_incomplete_group_is_malformed() -> None:
    with pytest.raises(DecodeError, match="groups of 4"):
        NmeaDecoder(["XDR"]).decode(sentence("WIXDR,C,19.5,C"))


def test_mda_weather_composite() -> None:
    got = values(NmeaDecoder(["MDA"]).decode(sentence(
        "WIMDA,29.921,I,1.0132,B,21.5,C,14.0,C,48.0,,9.9,C,180.0,T,178.0,M,9.7,N,5.0,M")))
    assert got == {"pressure": 101320.0, "air_temperature": 21.5, "water_temperature": 14.0,
                   "humidity": 48.0, "dew_point": 9.9, "wind_direction_true": 180.0,
                   "wind_direction_magnetic": 178.0, "wind_speed": 5.0}


def test_mda_pressure_from_inches_and_wind_from_knots() -> None:
    got = values(NmeaDecoder(["MDA"]).decode(
        sentence("WIMDA,30.000,I,,B,,C,,C,,,,C,,T,,M,10,N,,M")))
    assert got == {"pressure": 101591.7, "wind_speed": 5.144}


def test_checksum_mismatch_is_a_crc_error() -> None:
    with pytest.raises(ChecksumError, match="computed 47, sentence says 48"):
        NmeaDecoder(ALL).decode(GGA[:-2] + b"48")


def test_single_changed_character_is_caught() -> None:
    with pytest.raises(ChecksumError):
        NmeaDecoder(ALL).decode(GGA.replace(b"545.4", b"545.5"))


def test_lower_case_checksum_accepted() -> None:
    assert NmeaDecoder(ALL).decode(RMC[:-2] + b"6a")


def test_missing_checksum_rejected_unless_allowed() -> None:
    bare = GGA[:-3]
    with pytest.raises(DecodeError, match="missing checksum"):
        NmeaDecoder(ALL).decode(bare)
    assert values(NmeaDecoder(ALL, require_checksum=False).decode(bare))["satellites"] == 8


def test_noise_before_the_dollar_is_ignored() -> None:
    assert NmeaDecoder(ALL).decode(b"\x00\xff$GP" + GGA)[0].name == "latitude"


@pytest.mark.parametrize("frame", [
    sentence("GPGSV,1,1,02,01,40,083,46,02,17,308,41"),  # supported talker, other sentence
    sentence("PGRME,15.0,M,45.0,M,25.0,M"),               # proprietary
    b"!AIVDM,1,1,,A,13aEOK?P00PD2wVMdLDRhgvL289?,0*26",  # AIS encapsulation
])
def test_valid_sentences_we_do_not_decode_give_nothing(frame: bytes) -> None:
    assert NmeaDecoder(ALL).decode(frame) == []


def test_sentence_filter() -> None:
    assert NmeaDecoder(["MWV"]).decode(GGA) == []


@pytest.mark.parametrize(("frame", "why"), [
    (b"no dollar here", "no '\\$'"),
    (b"$GPGGA,\x01*00", "non-printable"),
    (b"$GPGGA,1*4", "two hex digits"),
    (sentence("GPGGA,123519,48x7.038,N,01131.000,E,1,08,0.9,545.4,M,,M,,"), "ddmm"),
    (sentence("GPGGA,123519,4877.038,N,01131.000,E,1,08,0.9,545.4,M,,M,,"), "out of range"),
    (sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,nan,M,,M,,"), "not a number"),
    (sentence("GPGGA,123519,4807.038,N,01131.000,E,x,08,0.9,1,M,,M,,"), "not an integer"),
    (sentence("GPGGA,123519"), "at least 9"),
    (sentence("WIMWV,1,X,2,M,A"), "reference"),
])
def test_malformed_sentences_say_why(frame: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        NmeaDecoder(ALL).decode(frame)


def test_points_listed_for_selected_sentences() -> None:
    names = [n for n, _ in NmeaDecoder(["GGA", "MWV"]).points()]
    assert "latitude" in names
    assert "wind_speed_true" in names
    assert "pressure" not in names
    assert ("latitude", "lat") in NmeaDecoder(["RMC"]).points()
