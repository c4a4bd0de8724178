//! [`ByteSize`]: how many bytes a value weighs, for byte budgets and metrics.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

/// The number of payload bytes a value holds.
///
/// Used by the memory tier's byte budget and by observers ("bytes served").
/// It counts payload, not allocator overhead.
///
/// ```
/// use cache_core::ByteSize;
/// assert_eq!("héllo".to_string().byte_size(), 6);
/// assert_eq!(vec![0u8; 1024].byte_size(), 1024);
/// ```
pub trait ByteSize {
    /// Payload size in bytes.
    fn byte_size(&self) -> usize;
}

macro_rules! fixed_size {
    ($($t:ty),*) => {$(
        impl ByteSize for $t {
            fn byte_size(&self) -> usize { std::mem::size_of::<$t>() }
        }
    )*};
}
fixed_size!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64
);

impl ByteSize for str {
    fn byte_size(&self) -> usize {
        self.len()
    }
}
impl ByteSize for String {
    fn byte_size(&self) -> usize {
        self.len()
    }
}
impl ByteSize for [u8] {
    fn byte_size(&self) -> usize {
        self.len()
    }
}
impl ByteSize for Vec<u8> {
    fn byte_size(&self) -> usize {
        self.len()
    }
}
impl ByteSize for Bytes {
    fn byte_size(&self) -> usize {
        self.len()
    }
}
impl<T: ByteSize + ?Sized> ByteSize for &T {
    fn byte_size(&self) -> usize {
        (**self).byte_size()
    }
}
impl<T: ByteSize + ?Sized> ByteSize for Box<T> {
    fn byte_size(&self) -> usize {
        (**self).byte_size()
    }
}
impl<T: ByteSize + ?Sized> ByteSize for Arc<T> {
    fn byte_size(&self) -> usize {
        (**self).byte_size()
    }
}
impl<T: ByteSize + ?Sized> ByteSize for Rc<T> {
    fn byte_size(&self) -> usize {
        (**self).byte_size()
    }
}
impl<T: ByteSize + ToOwned + ?Sized> ByteSize for Cow<'_, T> {
    fn byte_size(&self) -> usize {
        self.as_ref().byte_size()
    }
}
impl<T: ByteSize> ByteSize for Option<T> {
    fn byte_size(&self) -> usize {
        self.as_ref().map_or(0, ByteSize::byte_size)
    }
}
