//! Exact unsigned integers up to 128 bits as Postgres `NUMERIC`, in its binary wire
//! form, so that ids, amounts and balances travel through binary COPY and come back
//! without a detour through text or floating point.
//!
//! The form (Postgres' `numeric_send`): `ndigits`, `weight`, `sign`, `dscale` as
//! big-endian 16-bit words, then `ndigits` base-10,000 digits, most significant first;
//! the value is `Σ digit[i] × 10000^(weight − i)`. Trailing zero digits are left out.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

/// Positive sign in the wire form (negative is 0x4000, NaN 0xC000).
const SIGN_POSITIVE: u16 = 0x0000;

/// An unsigned integer stored in a `NUMERIC` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numeric(pub u128);

impl Numeric {
    /// Base-10,000 digits, least significant first, without trailing (low) zeros,
    /// and the weight of the most significant one.
    fn digits(self) -> ([i16; 10], usize, i16) {
        let mut digits = [0i16; 10]; // 10000^10 > 2^128
        let mut count = 0;
        let mut value = self.0;
        while value > 0 {
            digits[count] = (value % 10_000) as i16;
            value /= 10_000;
            count += 1;
        }
        let weight = count as i16 - 1;
        (digits, count, weight)
    }
}

impl ToSql for Numeric {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let (digits, count, weight) = self.digits();
        let low_zeros = digits[..count].iter().take_while(|&&d| d == 0).count();
        let significant = &digits[low_zeros..count];
        out.put_i16(significant.len() as i16);
        out.put_i16(if count == 0 { 0 } else { weight });
        out.put_u16(SIGN_POSITIVE);
        out.put_u16(0); // display scale: integers
        for &digit in significant.iter().rev() {
            out.put_i16(digit);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

/// Why a `NUMERIC` read back is not one of ours.
#[derive(Debug, thiserror::Error)]
enum NumericError {
    #[error("NUMERIC value is shorter than its header says")]
    Truncated,
    #[error("NUMERIC value is negative or NaN")]
    NotUnsigned,
    #[error("NUMERIC value has a fraction")]
    Fraction,
    #[error("NUMERIC value does not fit in 128 bits")]
    TooLarge,
    #[error("NUMERIC digit {0} is out of range")]
    BadDigit(i16),
}

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Numeric, Box<dyn Error + Sync + Send>> {
        let word = |at: usize| -> Result<i16, NumericError> {
            raw.get(at..at + 2).map(|b| i16::from_be_bytes([b[0], b[1]])).ok_or(NumericError::Truncated)
        };
        let count = word(0)?;
        let weight = word(2)?;
        let sign = word(4)? as u16;
        if sign != SIGN_POSITIVE || count < 0 {
            return Err(Box::new(NumericError::NotUnsigned));
        }
        let mut value: u128 = 0;
        for index in 0..count {
            let digit = word(8 + 2 * index as usize)?;
            if !(0..10_000).contains(&digit) {
                return Err(Box::new(NumericError::BadDigit(digit)));
            }
            if index > weight {
                // A digit after the decimal point: only zero is an integer.
                if digit != 0 {
                    return Err(Box::new(NumericError::Fraction));
                }
                continue;
            }
            value = value
                .checked_mul(10_000)
                .and_then(|v| v.checked_add(digit as u128))
                .ok_or(NumericError::TooLarge)?;
        }
        // Trailing zero digits the sender left out.
        for _ in count.max(0)..=weight {
            value = value.checked_mul(10_000).ok_or(NumericError::TooLarge)?;
        }
        Ok(Numeric(value))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(value: u128) -> u128 {
        let mut out = BytesMut::new();
        Numeric(value).to_sql(&Type::NUMERIC, &mut out).unwrap();
        Numeric::from_sql(&Type::NUMERIC, &out).unwrap().0
    }

    #[test]
    fn values_survive_the_wire_form() {
        for value in
            [0, 1, 9_999, 10_000, 10_001, 100_000_000, 12_3400_0000_0000, u64::MAX as u128, u128::MAX]
        {
            assert_eq!(round_trip(value), value);
        }
        let mut seed = 0x9E37_79B9_7F4A_7C15_u128;
        for _ in 0..10_000 {
            seed = seed.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(1);
            let value = seed >> (seed % 128);
            assert_eq!(round_trip(value), value);
        }
    }

    #[test]
    fn the_form_is_postgres_own() {
        // 10_000 is one digit (1) of weight 1, its zero digit left out.
        let mut out = BytesMut::new();
        Numeric(10_000).to_sql(&Type::NUMERIC, &mut out).unwrap();
        assert_eq!(&out[..], &[0, 1, 0, 1, 0, 0, 0, 0, 0, 1]);
        // Zero has no digits.
        out.clear();
        Numeric(0).to_sql(&Type::NUMERIC, &mut out).unwrap();
        assert_eq!(&out[..], &[0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn what_is_not_an_unsigned_integer_is_refused() {
        let negative = [0, 1, 0, 0, 0x40, 0, 0, 0, 0, 5];
        let fraction = [0, 2, 0, 0, 0, 0, 0, 4, 0, 5, 0, 5]; // 5.0005
        let truncated = [0, 3, 0, 2, 0, 0, 0, 0, 0, 1];
        let huge = [0, 1, 0, 40, 0, 0, 0, 0, 0, 1]; // 10000^40
        for raw in [&negative[..], &fraction[..], &truncated[..], &huge[..], &[0u8; 3][..]] {
            assert!(Numeric::from_sql(&Type::NUMERIC, raw).is_err(), "{raw:?}");
        }
        // A zero fraction is still an integer: 5.0000 sent with its zero digit.
        let zero_fraction = [0, 2, 0, 0, 0, 0, 0, 4, 0, 5, 0, 0];
        assert_eq!(Numeric::from_sql(&Type::NUMERIC, &zero_fraction).unwrap(), Numeric(5));
    }
}
