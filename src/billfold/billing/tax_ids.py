"""Stripe's tax ID types, with format checks for the common ones.

Types without a pattern here are accepted as given (trimmed, upper-cased): Stripe's
own validation of those is looser than a checksum anyway.
"""

from __future__ import annotations

import re

TAX_ID_TYPES = frozenset(
    [
        "ad_nrt",
        "ae_trn",
        "al_tin",
        "am_tin",
        "ao_tin",
        "ar_cuit",
        "au_abn",
        "au_arn",
        "aw_tin",
        "az_tin",
        "ba_tin",
        "bb_tin",
        "bd_bin",
        "bf_ifu",
        "bg_uic",
        "bh_vat",
        "bj_ifu",
        "bo_tin",
        "br_cnpj",
        "br_cpf",
        "bs_tin",
        "by_tin",
        "ca_bn",
        "ca_gst_hst",
        "ca_pst_bc",
        "ca_pst_mb",
        "ca_pst_sk",
        "ca_qst",
        "cd_nif",
        "ch_uid",
        "ch_vat",
        "cl_tin",
        "cm_niu",
        "cn_tin",
        "co_nit",
        "cr_tin",
        "cv_nif",
        "de_stn",
        "do_rcn",
        "ec_ruc",
        "eg_tin",
        "es_cif",
        "et_tin",
        "eu_oss_vat",
        "eu_vat",
        "gb_vat",
        "ge_vat",
        "gn_nif",
        "hk_br",
        "hr_oib",
        "hu_tin",
        "id_npwp",
        "il_vat",
        "in_gst",
        "is_vat",
        "jp_cn",
        "jp_rn",
        "jp_trn",
        "ke_pin",
        "kg_tin",
        "kh_tin",
        "kr_brn",
        "kz_bin",
        "la_tin",
        "li_uid",
        "li_vat",
        "ma_vat",
        "md_vat",
        "me_pib",
        "mk_vat",
        "mr_nif",
        "mx_rfc",
        "my_frp",
        "my_itn",
        "my_sst",
        "ng_tin",
        "no_vat",
        "no_voec",
        "np_pan",
        "nz_gst",
        "om_vat",
        "pe_ruc",
        "ph_tin",
        "ro_tin",
        "rs_pib",
        "ru_inn",
        "ru_kpp",
        "sa_vat",
        "sg_gst",
        "sg_uen",
        "si_tin",
        "sn_ninea",
        "sr_fin",
        "sv_nit",
        "th_vat",
        "tj_tin",
        "tr_tin",
        "tw_vat",
        "tz_vat",
        "ua_vat",
        "ug_tin",
        "us_ein",
        "uy_ruc",
        "uz_tin",
        "uz_vat",
        "ve_rif",
        "vn_tin",
        "za_vat",
        "zm_tin",
        "zw_tin",
    ]
)

_EU_VAT = (
    r"ATU\d{8}|BE[01]\d{9}|BG\d{9,10}|CY\d{8}[A-Z]|CZ\d{8,10}|DE\d{9}|DK\d{8}|EE\d{9}"
    r"|EL\d{9}|ES[A-Z0-9]\d{7}[A-Z0-9]|FI\d{8}|FR[A-HJ-NP-Z0-9]{2}\d{9}|HR\d{11}|HU\d{8}"
    r"|IE\d{7}[A-W][A-IW]?|IE\d[A-Z+*]\d{5}[A-W]|IT\d{11}|LT(\d{9}|\d{12})|LU\d{8}|LV\d{11}"
    r"|MT\d{8}|NL\d{9}B\d{2}|PL\d{10}|PT\d{9}|RO\d{2,10}|SE\d{12}|SI\d{8}|SK\d{10}|XI\d{9}"
    r"|EU\d{9}"
)

PATTERNS: dict[str, tuple[str, str]] = {
    # type: (regex on the normalized value, example shown in the error)
    "eu_vat": (_EU_VAT, "DE123456789"),
    "eu_oss_vat": (r"EU\d{9}", "EU123456789"),
    "gb_vat": (r"GB(\d{9}|\d{12}|GD\d{3}|HA\d{3})", "GB123456789"),
    "us_ein": (r"\d{2}-?\d{7}", "12-3456789"),
    "au_abn": (r"\d{11}", "12345678912"),
    "au_arn": (r"\d{12}", "123456789123"),
    "ca_bn": (r"\d{9}", "123456789"),
    "in_gst": (r"\d{2}[A-Z]{5}\d{4}[A-Z][1-9A-Z]Z[0-9A-Z]", "12ABCDE3456FGZH"),
    "ch_vat": (r"CHE-?\d{3}\.?\d{3}\.?\d{3}(MWST|TVA|IVA)", "CHE-123.456.789 MWST"),
    "no_vat": (r"\d{9}MVA", "123456789MVA"),
    "nz_gst": (r"\d{8,9}", "123456789"),
    "jp_cn": (r"\d{13}", "1234567891234"),
    "br_cnpj": (r"\d{2}\.?\d{3}\.?\d{3}/?\d{4}-?\d{2}", "01.234.456/5432-10"),
    "br_cpf": (r"\d{3}\.?\d{3}\.?\d{3}-?\d{2}", "123.456.789-87"),
    "mx_rfc": (r"[A-Z&Ñ]{3,4}\d{6}[A-Z0-9]{3}", "ABC010203AB9"),
    "za_vat": (r"4\d{9}", "4123456789"),
    "sg_gst": (r"[A-Z]\d{8}[A-Z]|\d{8,9}[A-Z]|M\d{8}[A-Z]", "M12345678X"),
}


def normalize(tax_id_type: str, value: str) -> str:
    """Upper-case, without the spaces a person types; ch_vat keeps its dots and dashes."""
    cleaned = value.strip().upper().replace(" ", "")
    if tax_id_type in ("eu_vat", "gb_vat", "eu_oss_vat", "no_vat", "au_abn", "au_arn"):
        cleaned = cleaned.replace(".", "").replace("-", "")
    return cleaned


def check(tax_id_type: str, value: str) -> str:
    """The normalized tax id; ValueError naming the expected format if it does not fit."""
    if tax_id_type not in TAX_ID_TYPES:
        raise ValueError(f"unknown tax_id_type {tax_id_type!r} (use one of Stripe's, e.g. eu_vat)")
    normalized = normalize(tax_id_type, value)
    if not normalized or len(normalized) > 64:
        raise ValueError("tax_id must be 1 to 64 characters")
    pattern = PATTERNS.get(tax_id_type)
    if pattern and not re.fullmatch(pattern[0], normalized):
        raise ValueError(f"not a valid {tax_id_type} number (for example {pattern[1]})")
    return normalized
