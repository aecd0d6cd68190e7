"""Stripe's tax ID types, checked with python-stdnum (check digits included) where it knows
the number, and with a short pattern for the few it does not.

A checked number is stored in stdnum's compact form: upper-case, without the spaces, dots
and dashes a person types (`de 136 695 976` → `DE136695976`), keeping the country prefix
that Stripe's examples show (`GB…`, `T…` for jp_trn, `MK…`). Types with neither a stdnum
module nor a pattern here are accepted as given (trimmed, upper-cased, without spaces).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from stdnum.exceptions import InvalidChecksum, InvalidComponent, InvalidFormat, ValidationError

# One line per few codes rather than one per line: a table to read, not a list to scroll.
TAX_ID_TYPES = frozenset(
    """
    ad_nrt ae_trn al_tin am_tin ao_tin ar_cuit au_abn au_arn aw_tin az_tin ba_tin bb_tin
    bd_bin bf_ifu bg_uic bh_vat bj_ifu bo_tin br_cnpj br_cpf bs_tin by_tin ca_bn ca_gst_hst
    ca_pst_bc ca_pst_mb ca_pst_sk ca_qst cd_nif ch_uid ch_vat cl_tin cm_niu cn_tin co_nit
    cr_tin cv_nif de_stn do_rcn ec_ruc eg_tin es_cif et_tin eu_oss_vat eu_vat gb_vat ge_vat
    gn_nif hk_br hr_oib hu_tin id_npwp il_vat in_gst is_vat jp_cn jp_rn jp_trn ke_pin kg_tin
    kh_tin kr_brn kz_bin la_tin li_uid li_vat ma_vat md_vat me_pib mk_vat mr_nif mx_rfc
    my_frp my_itn my_sst ng_tin no_vat no_voec np_pan nz_gst om_vat pe_ruc ph_tin ro_tin
    rs_pib ru_inn ru_kpp sa_vat sg_gst sg_uen si_tin sn_ninea sr_fin sv_nit th_vat tj_tin
    tr_tin tw_vat tz_vat ua_vat ug_tin us_ein uy_ruc uz_tin uz_vat ve_rif vn_tin za_vat
    zm_tin zw_tin
    """.split()  # noqa: SIM905
)


class NumberModule(Protocol):
    """What Billfold uses of a stdnum module."""

    def validate(self, number: str) -> str: ...


Check = Callable[[str], str]  # the cleaned value → the stored form; ValidationError if not


def _stdnum(
    *names: str, prefix: str = "", prefix_optional: bool = False, refuse: tuple[str, ...] = ()
) -> Check:
    """Valid if one of the stdnum modules `names` (`eu.vat` for `stdnum.eu.vat`) validates the
    number; stored as `prefix` + stdnum's compact form. A required `prefix` must be typed, an
    optional one is added when missing; numbers starting with one of `refuse` are refused."""
    modules = [cast(NumberModule, importlib.import_module(f"stdnum.{name}")) for name in names]

    def check(value: str) -> str:
        if value.startswith(refuse):
            raise InvalidComponent()
        if prefix and value.startswith(prefix):
            value = value[len(prefix) :]
        elif prefix and not prefix_optional:
            raise InvalidFormat()
        failures: list[ValidationError] = []
        for module in modules:
            try:
                return prefix + module.validate(value)
            except ValidationError as exc:
                failures.append(exc)
        # The most telling reason: a number of the right shape with a wrong check digit.
        raise next((f for f in failures if isinstance(f, InvalidChecksum)), failures[0])

    return check


def _pattern(regex: str) -> Check:
    """For the types stdnum has no module for: a format, without a check digit."""

    def check(value: str) -> str:
        if re.fullmatch(regex, value) is None:
            raise InvalidFormat()
        return value

    return check


@dataclass(frozen=True)
class Rule:
    check: Check
    example: str  # a valid number, shown in the error


# stdnum.eu.vat also takes One Stop Shop numbers, as Stripe's eu_vat does: the non-union
# scheme's `EU…` (a VAT registration), not the import scheme's `IM…` (an importer's).
RULES: dict[str, Rule] = {
    "ad_nrt": Rule(_stdnum("ad.nrt"), "A-723456-Y"),
    "al_tin": Rule(_stdnum("al.nipt"), "J12345678N"),
    "ar_cuit": Rule(_stdnum("ar.cuit"), "20-3456789-06"),
    "au_abn": Rule(_stdnum("au.abn"), "12345678012"),
    "au_arn": Rule(_pattern(r"\d{12}"), "123456789123"),
    "az_tin": Rule(_stdnum("az.voen"), "1234567801"),
    "br_cnpj": Rule(_stdnum("br.cnpj"), "01.234.486/5432-10"),
    "br_cpf": Rule(_stdnum("br.cpf"), "123.456.289-87"),
    "by_tin": Rule(_stdnum("by.unp"), "123456783"),
    "ca_bn": Rule(_stdnum("ca.bn"), "123456782"),
    "ca_gst_hst": Rule(_stdnum("ca.bn"), "123456782RT0002"),
    "ch_uid": Rule(_stdnum("ch.uid"), "CHE-123.456.788"),
    "ch_vat": Rule(_stdnum("ch.vat"), "CHE-123.456.788 MWST"),
    "cl_tin": Rule(_stdnum("cl.rut"), "12.345.678-5"),
    "cn_tin": Rule(_stdnum("cn.uscc"), "911234567890123453"),
    "co_nit": Rule(_stdnum("co.nit"), "123.456.789-6"),
    "cr_tin": Rule(_stdnum("cr.cpj", "cr.cpf", "cr.cr"), "3-101-567890"),
    "de_stn": Rule(_stdnum("de.stnr"), "1234567890"),
    "do_rcn": Rule(_stdnum("do.rnc", "do.cedula"), "1-23-45678-6"),
    "ec_ruc": Rule(_stdnum("ec.ruc"), "1234567897001"),
    "eg_tin": Rule(_stdnum("eg.tn"), "123456789"),
    "es_cif": Rule(_stdnum("es.nif"), "A12345674"),
    "eu_oss_vat": Rule(_stdnum("eu.oss", refuse=("IM",)), "EU372123456"),
    "eu_vat": Rule(_stdnum("eu.vat", refuse=("IM",)), "DE123456788"),
    "gb_vat": Rule(_stdnum("gb.vat", prefix="GB"), "GB123456782"),
    "gn_nif": Rule(_stdnum("gn.nifp"), "123456782"),
    "hr_oib": Rule(_stdnum("hr.oib"), "12345678903"),
    "id_npwp": Rule(_stdnum("id.npwp"), "01.234.567.4-012.345"),
    "in_gst": Rule(_stdnum("in_.gstin"), "12ABCPE3456F1ZA"),
    "is_vat": Rule(_stdnum("is_.vsk"), "123456"),
    "jp_cn": Rule(_stdnum("jp.cn"), "1234567891236"),
    "jp_trn": Rule(_stdnum("jp.cn", prefix="T"), "T1234567891236"),
    "ke_pin": Rule(_stdnum("ke.pin"), "P000111111A"),
    "kr_brn": Rule(_stdnum("kr.brn"), "123-45-67890"),
    "me_pib": Rule(_stdnum("me.pib"), "12345679"),
    "mk_vat": Rule(_stdnum("mk.edb", prefix="MK", prefix_optional=True), "MK1234567890125"),
    "mx_rfc": Rule(_stdnum("mx.rfc"), "ABC010203AB9"),
    "no_vat": Rule(_stdnum("no.mva"), "123456785MVA"),
    "nz_gst": Rule(_stdnum("nz.ird"), "123456785"),
    "pe_ruc": Rule(_stdnum("pe.ruc"), "20123456786"),
    "ro_tin": Rule(_stdnum("ro.cf"), "1630615123457"),
    "rs_pib": Rule(_stdnum("rs.pib"), "123456788"),
    "ru_inn": Rule(_stdnum("ru.inn"), "1234567894"),
    "sg_gst": Rule(_pattern(r"[A-Z]\d{8}[A-Z]|\d{8,9}[A-Z]|M\d{8}[A-Z]"), "M12345678X"),
    "sg_uen": Rule(_stdnum("sg.uen"), "123456789E"),
    "si_tin": Rule(_stdnum("si.ddv"), "12345679"),
    "sn_ninea": Rule(_stdnum("sn.ninea"), "12345672A2"),
    "sv_nit": Rule(_stdnum("sv.nit"), "1234-567890-123-0"),
    "th_vat": Rule(_stdnum("th.tin"), "0123456789121"),
    "tr_tin": Rule(_stdnum("tr.vkn", "tr.tckimlik"), "0123456789"),
    "tw_vat": Rule(_stdnum("tw.ubn"), "12345675"),
    "us_ein": Rule(_stdnum("us.ein"), "12-3456789"),
    "uy_ruc": Rule(_stdnum("uy.rut"), "211234560019"),
    "ve_rif": Rule(_stdnum("ve.rif"), "J-12345678-4"),
    "vn_tin": Rule(_stdnum("vn.mst"), "1234567893"),
    "za_vat": Rule(_pattern(r"4\d{9}"), "4123456789"),
}


def _clean(value: str) -> str:
    return value.strip().upper().replace(" ", "")


def check(tax_id_type: str, value: str) -> str:
    """The normalized tax id; ValueError naming the expected format if it does not fit."""
    if tax_id_type not in TAX_ID_TYPES:
        raise ValueError(f"unknown tax_id_type {tax_id_type!r} (use one of Stripe's, e.g. eu_vat)")
    cleaned = _clean(value)
    if not cleaned or len(cleaned) > 64:
        raise ValueError("tax_id must be 1 to 64 characters")
    rule = RULES.get(tax_id_type)
    if rule is None:
        return cleaned
    try:
        return rule.check(cleaned)
    except ValidationError as exc:
        reason = ": the check digit does not match" if isinstance(exc, InvalidChecksum) else ""
        raise ValueError(
            f"not a valid {tax_id_type} number{reason} (for example {rule.example})"
        ) from None
