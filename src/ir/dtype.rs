//! Element types of tensors, with the ONNX `TensorProto.DataType` codes.

use std::fmt;

/// The element type of a tensor. Codes the schema does not know are kept as
/// [`DataType::Other`] so that a model from a newer ONNX still round-trips.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataType {
    /// Code 0: no type given.
    Undefined,
    /// 32-bit IEEE float.
    Float,
    /// Unsigned 8-bit integer.
    Uint8,
    /// Signed 8-bit integer.
    Int8,
    /// Unsigned 16-bit integer.
    Uint16,
    /// Signed 16-bit integer.
    Int16,
    /// Signed 32-bit integer.
    Int32,
    /// Signed 64-bit integer.
    Int64,
    /// Byte string.
    String,
    /// Boolean, one byte per element.
    Bool,
    /// 16-bit IEEE float.
    Float16,
    /// 64-bit IEEE float.
    Double,
    /// Unsigned 32-bit integer.
    Uint32,
    /// Unsigned 64-bit integer.
    Uint64,
    /// Two 32-bit floats.
    Complex64,
    /// Two 64-bit floats.
    Complex128,
    /// Brain float 16.
    Bfloat16,
    /// 8-bit float, 4 exponent bits, finite only.
    Float8e4m3fn,
    /// 8-bit float, 4 exponent bits, finite only, no negative zero.
    Float8e4m3fnuz,
    /// 8-bit float, 5 exponent bits.
    Float8e5m2,
    /// 8-bit float, 5 exponent bits, no negative zero.
    Float8e5m2fnuz,
    /// Unsigned 4-bit integer, two per byte.
    Uint4,
    /// Signed 4-bit integer, two per byte.
    Int4,
    /// 4-bit float (2 exponent bits, 1 mantissa bit), two per byte.
    Float4e2m1,
    /// 8-bit exponent-only float (scale factors).
    Float8e8m0,
    /// Unsigned 2-bit integer, four per byte.
    Uint2,
    /// Signed 2-bit integer, four per byte.
    Int2,
    /// 6-bit float, 2 exponent bits.
    Float6e2m3,
    /// 6-bit float, 3 exponent bits.
    Float6e3m2,
    /// A code this version of whittle does not know.
    Other(i32),
}

const TABLE: [(DataType, i32, &str, u32); 29] = [
    (DataType::Undefined, 0, "undefined", 0),
    (DataType::Float, 1, "f32", 32),
    (DataType::Uint8, 2, "u8", 8),
    (DataType::Int8, 3, "i8", 8),
    (DataType::Uint16, 4, "u16", 16),
    (DataType::Int16, 5, "i16", 16),
    (DataType::Int32, 6, "i32", 32),
    (DataType::Int64, 7, "i64", 64),
    (DataType::String, 8, "string", 0),
    (DataType::Bool, 9, "bool", 8),
    (DataType::Float16, 10, "f16", 16),
    (DataType::Double, 11, "f64", 64),
    (DataType::Uint32, 12, "u32", 32),
    (DataType::Uint64, 13, "u64", 64),
    (DataType::Complex64, 14, "c64", 64),
    (DataType::Complex128, 15, "c128", 128),
    (DataType::Bfloat16, 16, "bf16", 16),
    (DataType::Float8e4m3fn, 17, "f8e4m3fn", 8),
    (DataType::Float8e4m3fnuz, 18, "f8e4m3fnuz", 8),
    (DataType::Float8e5m2, 19, "f8e5m2", 8),
    (DataType::Float8e5m2fnuz, 20, "f8e5m2fnuz", 8),
    (DataType::Uint4, 21, "u4", 4),
    (DataType::Int4, 22, "i4", 4),
    (DataType::Float4e2m1, 23, "f4e2m1", 4),
    (DataType::Float8e8m0, 24, "f8e8m0", 8),
    (DataType::Uint2, 25, "u2", 2),
    (DataType::Int2, 26, "i2", 2),
    (DataType::Float6e2m3, 27, "f6e2m3", 6),
    (DataType::Float6e3m2, 28, "f6e3m2", 6),
];

impl DataType {
    /// The type of an ONNX `DataType` code.
    pub fn from_code(code: i32) -> DataType {
        match usize::try_from(code).ok().and_then(|i| TABLE.get(i)) {
            Some(&(dt, _, _, _)) => dt,
            None => DataType::Other(code),
        }
    }

    /// The ONNX `DataType` code.
    pub fn code(self) -> i32 {
        match self {
            DataType::Other(code) => code,
            dt => TABLE.iter().find(|row| row.0 == dt).map_or(0, |row| row.1),
        }
    }

    /// Bits per element in packed (`raw_data`) form; `None` for strings,
    /// unknown codes and `Undefined`.
    pub fn bits(self) -> Option<u32> {
        match self {
            DataType::Other(_) => None,
            dt => TABLE
                .iter()
                .find(|row| row.0 == dt)
                .map(|row| row.3)
                .filter(|&bits| bits > 0),
        }
    }

    /// Bytes needed to store `elements` elements in packed form (sub-byte
    /// types round up to whole bytes).
    pub fn packed_len(self, elements: u64) -> Option<u64> {
        let bits = u64::from(self.bits()?);
        elements.checked_mul(bits).map(|b| b.div_ceil(8))
    }

    /// True for the floating-point types (including float8/6/4 formats).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            DataType::Float
                | DataType::Float16
                | DataType::Double
                | DataType::Bfloat16
                | DataType::Float8e4m3fn
                | DataType::Float8e4m3fnuz
                | DataType::Float8e5m2
                | DataType::Float8e5m2fnuz
                | DataType::Float4e2m1
                | DataType::Float8e8m0
                | DataType::Float6e2m3
                | DataType::Float6e3m2
        )
    }

    /// Short lowercase name used in dumps and reports (`f32`, `i8`, ...).
    pub fn name(self) -> String {
        match self {
            DataType::Other(code) => format!("dtype{code}"),
            dt => TABLE
                .iter()
                .find(|row| row.0 == dt)
                .map_or_else(String::new, |row| row.2.to_string()),
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_table_is_in_code_order() {
        for (i, row) in TABLE.iter().enumerate() {
            assert_eq!(row.1, i as i32);
            assert_eq!(DataType::from_code(row.1), row.0);
            assert_eq!(row.0.code(), row.1);
        }
        assert_eq!(DataType::from_code(99), DataType::Other(99));
        assert_eq!(DataType::Other(99).code(), 99);
        assert_eq!(DataType::from_code(-1), DataType::Other(-1));
    }

    #[test]
    fn packed_lengths_round_sub_byte_types_up() {
        assert_eq!(DataType::Float.packed_len(3), Some(12));
        assert_eq!(DataType::Int4.packed_len(3), Some(2));
        assert_eq!(DataType::Int2.packed_len(5), Some(2));
        assert_eq!(DataType::String.packed_len(3), None);
        assert_eq!(DataType::Float.packed_len(u64::MAX), None);
    }
}
